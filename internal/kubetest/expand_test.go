package kubetest

import "testing"

func TestExpand(t *testing.T) {
	vars := map[string]string{
		"VAR":   "value",
		"EMPTY": "",
		"POD":   "pod-1",
		"A":     "$(B)", // values are not expanded again
		"B":     "b",
		"":      "empty-name",
	}
	lookup := lookupIn(vars)
	for _, c := range []struct{ in, want string }{
		{"", ""},
		{"plain", "plain"},
		{"$(VAR)", "value"},
		{"x$(VAR)y", "xvaluey"},
		{"$(VAR)$(VAR)", "valuevalue"},
		{"$(EMPTY)", ""},
		{"--name=$(POD)", "--name=pod-1"},
		{"$(UNSET)", "$(UNSET)"},
		{"a $(UNSET) b $(VAR)", "a $(UNSET) b value"},
		{"$$(VAR)", "$(VAR)"},
		{"$$$(VAR)", "$value"},
		{"$$$$(VAR)", "$$(VAR)"},
		{"$$", "$"},
		{"$$$", "$$"},
		{"$", "$"},
		{"x$", "x$"},
		{"$a", "$a"},
		{"$VAR", "$VAR"},
		{"${VAR}", "${VAR}"},
		{"$(", "$("},
		{"$(VAR", "$(VAR"},
		{"$($(VAR)", "$($(VAR)"}, // the name is "$(VAR": unknown
		{"$(VAR))", "value)"},
		{"$(A)", "$(B)"},
		{"$()", "empty-name"},
		{"$(X Y)", "$(X Y)"},
		{"é$(VAR)é", "évalueé"},
		{"$é", "$é"},
		{"100$", "100$"},
		{"$(VAR)$", "value$"},
		{"$($$)", "$($$)"},
	} {
		if got := Expand(c.in, lookup); got != c.want {
			t.Errorf("Expand(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestLookupInOrder(t *testing.T) {
	l := lookupIn(map[string]string{"A": "1"}, map[string]string{"A": "2", "B": "3"})
	if v, _ := l("A"); v != "1" {
		t.Errorf("A = %q, want the first map's 1", v)
	}
	if v, _ := l("B"); v != "3" {
		t.Errorf("B = %q", v)
	}
	if _, ok := l("C"); ok {
		t.Error("C found")
	}
}
