package promtest

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

const page = `# HELP granary_worker_pages_total Pages.
# TYPE granary_worker_pages_total counter
granary_worker_pages_total{result="hit"} 7
granary_worker_pages_total{result="miss"} 3
# TYPE granary_membership_members gauge
granary_membership_members{state="live"} 3
granary_membership_members{state="not live"} 1
# TYPE granary_worker_pages_total_extra counter
granary_worker_pages_total_extra 100
`

func TestSum(t *testing.T) {
	for _, tc := range []struct {
		name  string
		match []string
		want  float64
	}{
		{"granary_worker_pages_total", nil, 10},
		{"granary_worker_pages_total", []string{`result="hit"`}, 7},
		{"granary_worker_pages_total", []string{`result="none"`}, 0},
		{"granary_membership_members", []string{`state="not live"`}, 1},
		{"granary_absent", nil, 0},
	} {
		got, err := Sum([]byte(page), tc.name, tc.match...)
		if err != nil || got != tc.want {
			t.Errorf("Sum(%s, %v) = %v, %v; want %v", tc.name, tc.match, got, err, tc.want)
		}
	}
	if _, err := Sum([]byte("not { metrics"), "x"); err == nil {
		t.Error("a malformed page parsed")
	}
}

func TestScrape(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		w.Write([]byte(page))
	}))
	defer srv.Close()
	if got, err := Scrape(nil, srv.URL+"/metrics", "granary_worker_pages_total", `result="miss"`); err != nil || got != 3 {
		t.Errorf("Scrape = %v, %v", got, err)
	}
	if _, err := Scrape(nil, srv.URL+"/other", "x"); err == nil {
		t.Error("a 404 scraped")
	}
}
