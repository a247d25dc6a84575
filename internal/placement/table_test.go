package placement

import (
	"math"
	"slices"
	"strings"
	"testing"
)

func TestDuplicates(t *testing.T) {
	ms := []Member{{ID: "b", Addr: "old:1"}, {ID: "a", Addr: "a:1"}, {ID: "b", Addr: "new:1"}, {ID: "", Weight: math.NaN()}}
	tab := New(ms)
	got := tab.Members()
	want := []Member{{ID: "", Weight: 1}, {ID: "a", Addr: "a:1", Weight: 1}, {ID: "b", Addr: "new:1", Weight: 1}}
	if !slices.Equal(got, want) {
		t.Errorf("New: members %v, want %v (sorted, last duplicate wins, weights normalized)", got, want)
	}
	_, err := NewChecked(ms)
	for _, part := range []string{`member 2 ("b"): duplicate ID, also member 0`, `member 3 (""): empty ID`, `member 3 (""): weight NaN`} {
		if err == nil || !strings.Contains(err.Error(), part) {
			t.Errorf("NewChecked: error %v, want it to mention %q", err, part)
		}
	}
	if tab, err := NewChecked(members(3)); err != nil || tab.Len() != 3 {
		t.Errorf("NewChecked(valid) = %v, %v", tab, err)
	}
}

func TestEqual(t *testing.T) {
	ms := members(3)
	reversed := slices.Clone(ms)
	slices.Reverse(reversed)
	moved := slices.Clone(ms)
	moved[1].Addr = "10.9.9.9:7070"
	heavier := slices.Clone(ms)
	heavier[0].Weight = 2
	for _, tc := range []struct {
		name string
		a, b *Table
		want bool
	}{
		{"same members, other order", New(ms), New(reversed), true},
		{"weight 0 is weight 1", New(ms), New(append(ms[:2:2], Member{ID: "w3", Addr: ms[2].Addr})), true},
		{"both empty", New(nil), nil, true},
		{"address changed", New(ms), New(moved), false},
		{"weight changed", New(ms), New(heavier), false},
		{"member removed", New(ms), New(ms[:2]), false},
	} {
		if got := tc.a.Equal(tc.b); got != tc.want {
			t.Errorf("%s: Equal = %v, want %v", tc.name, got, tc.want)
		}
	}
}
