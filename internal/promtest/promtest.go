// Package promtest reads Prometheus metrics for tests: the sum of a metric's
// samples in a /metrics page, picked by label.
package promtest

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Sum returns the sum of the samples of metric name (a counter, gauge or
// untyped metric) in a page of the Prometheus text format whose labels
// include every match, each written `label="value"`.
func Sum(page []byte, name string, match ...string) (float64, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(bytes.NewReader(page))
	if err != nil {
		return 0, fmt.Errorf("parse metrics: %w", err)
	}
	f, ok := families[name]
	if !ok {
		return 0, nil
	}
	var sum float64
	for _, m := range f.GetMetric() {
		if labelsMatch(m, match) {
			sum += value(m)
		}
	}
	return sum, nil
}

func labelsMatch(m *dto.Metric, match []string) bool {
	for _, want := range match {
		found := false
		for _, l := range m.GetLabel() {
			if fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()) == want {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	default:
		return m.GetUntyped().GetValue()
	}
}

// Scrape reads the metrics page at url with hc (nil: a client with a 5 s
// timeout) and sums metric name as Sum does.
func Scrape(hc *http.Client, url, name string, match ...string) (float64, error) {
	if hc == nil {
		hc = &http.Client{Timeout: 5 * time.Second}
	}
	resp, err := hc.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	page, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(page)))
	}
	return Sum(page, name, match...)
}
