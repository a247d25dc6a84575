package testport

import (
	"net"
	"testing"
)

func TestPortsBelowTheEphemeralRange(t *testing.T) {
	top := ephemeralLow()
	seen := map[int]bool{}
	for range 50 {
		p, err := Port("127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		if p < lowest || p >= top {
			t.Fatalf("port %d outside [%d, %d)", p, lowest, top)
		}
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
	}
}

func TestAddrIsBindable(t *testing.T) {
	for _, host := range []string{"127.0.0.1", ""} {
		a, err := Addr(host)
		if err != nil {
			t.Fatal(err)
		}
		l, err := net.Listen("tcp", a)
		if err != nil {
			t.Fatalf("listen on %s: %v", a, err)
		}
		l.Close()
	}
}

func TestTakenPortIsSkipped(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if free("127.0.0.1", l.Addr().(*net.TCPAddr).Port) {
		t.Fatal("a port with a listener reported free")
	}
}
