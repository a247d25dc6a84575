// Package testport hands tests TCP ports to give the servers they start.
//
// A port the kernel picked for a listener on port 0 comes from the
// ephemeral range, the same range it takes the local port of every outgoing
// connection from: between the moment a test closes its probe listener and
// the moment its server binds, a connection of any process on the machine
// may take the port ("address already in use"). The ports handed out here
// lie below that range, where the kernel never picks one by itself; each is
// free when handed out and is handed out once per process, and random
// choice keeps test processes running side by side apart.
package testport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// lowest is the bottom of the range ports are drawn from: above the ports
// of well-known services.
const lowest = 10000

var (
	mu     sync.Mutex
	handed = map[int]bool{}
)

// Addr returns host:port with a port free on host a moment ago; host is an
// IP address ("127.0.0.1") or "" for every interface.
func Addr(host string) (string, error) {
	p, err := Port(host)
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(host, strconv.Itoa(p)), nil
}

// Port returns a TCP port free on host (see Addr) a moment ago.
func Port(host string) (int, error) {
	top := ephemeralLow()
	mu.Lock()
	defer mu.Unlock()
	if top-lowest >= 1000 {
		for range 200 {
			p := lowest + rand.IntN(top-lowest)
			if handed[p] || !free(host, p) {
				continue
			}
			handed[p] = true
			return p, nil
		}
	}
	// A machine whose ephemeral range starts low: the kernel's choice.
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, fmt.Errorf("find a free port on %q: %w", host, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func free(host string, port int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// ephemeralLow is the first port of the kernel's ephemeral range (32768,
// Linux's default, when it cannot be read).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 32768
	}
	n, err := strconv.Atoi(f[0])
	if err != nil || n <= lowest {
		return 32768
	}
	return n
}
