package operator

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/granary-cache/granary/api/v1alpha1"
	"github.com/granary-cache/granary/internal/load"
	"github.com/granary-cache/granary/internal/wire"
)

// LoadReporter writes a running load's progress into its DataLoad's status:
// files and bytes done of the total, the rate, and at the end the outcome
// and the failures with their reasons. It writes at most once a second.
type LoadReporter struct {
	c     client.Client
	name  types.NamespacedName
	every time.Duration

	mu      sync.Mutex
	last    time.Time
	started metav1.Time
	err     error // the last write's error
}

// maxReportedFailures bounds the failures listed in a status.
const maxReportedFailures = 20

// ParseReportTarget reads "dataload/NAMESPACE/NAME".
func ParseReportTarget(s string) (types.NamespacedName, error) {
	parts := strings.Split(s, "/")
	if len(parts) != 3 || parts[0] != "dataload" || parts[1] == "" || parts[2] == "" {
		return types.NamespacedName{}, fmt.Errorf("--report-to %q: expected dataload/NAMESPACE/NAME", s)
	}
	return types.NamespacedName{Namespace: parts[1], Name: parts[2]}, nil
}

// NewLoadReporter reaches the API server and checks the DataLoad exists.
func NewLoadReporter(ctx context.Context, cfg *rest.Config, name types.NamespacedName) (*LoadReporter, error) {
	c, err := client.New(cfg, client.Options{Scheme: Scheme()})
	if err != nil {
		return nil, fmt.Errorf("report to DataLoad %s: %w", name, err)
	}
	var dl v1alpha1.DataLoad
	if err := c.Get(ctx, name, &dl); err != nil {
		return nil, fmt.Errorf("report to DataLoad %s: %w", name, err)
	}
	return &LoadReporter{c: c, name: name, every: time.Second, started: metav1.Now()}, nil
}

// Start marks the load as running.
func (r *LoadReporter) Start(ctx context.Context) error {
	return r.write(ctx, func(st *v1alpha1.DataLoadStatus) {
		st.Phase = v1alpha1.LoadLoading
		st.StartTime = &r.started
		st.CompletionTime, st.Duration = nil, ""
		st.Failures, st.FailureCount = nil, 0
		st.FilesDone, st.FilesTotal, st.BytesDone, st.BytesTotal, st.BytesSkipped = 0, 0, 0, 0, 0
		st.Progress, st.Rate = "0.0%", ""
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: v1alpha1.ConditionReady, Status: metav1.ConditionFalse,
			Reason: "Loading", Message: "the load is running"})
	})
}

// Progress is load.Options.Progress: it writes at most once a second.
func (r *LoadReporter) Progress(p wire.LoadProgress) {
	r.mu.Lock()
	if time.Since(r.last) < r.every {
		r.mu.Unlock()
		return
	}
	r.last = time.Now()
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := r.write(ctx, func(st *v1alpha1.DataLoadStatus) { setProgress(st, p) })
	r.mu.Lock()
	r.err = err
	r.mu.Unlock()
}

// Finish writes how the load ended.
func (r *LoadReporter) Finish(ctx context.Context, res load.Result, runErr error) error {
	return r.write(ctx, func(st *v1alpha1.DataLoadStatus) {
		setProgress(st, res.Progress)
		now := metav1.Now()
		st.CompletionTime = &now
		st.Duration = now.Sub(r.started.Time).Round(time.Second).String()
		st.FailureCount = res.Progress.Failed
		st.Failures = nil
		for _, f := range res.Failures {
			if len(st.Failures) == maxReportedFailures {
				break
			}
			st.Failures = append(st.Failures, v1alpha1.LoadFailure{Path: f.Path, Reason: fmt.Sprintf("block %d on worker %s: %s", f.Index, f.Worker, f.Error)})
		}
		ready := metav1.Condition{Type: v1alpha1.ConditionReady}
		switch {
		case runErr == nil:
			st.Phase, ready.Status, ready.Reason = v1alpha1.LoadComplete, metav1.ConditionTrue, "Complete"
			ready.Message = fmt.Sprintf("%d files, %s loaded (%s were cached already)", res.Progress.FilesDone, human(res.Progress.BytesDone), human(res.Progress.BytesSkipped))
		default:
			st.Phase, ready.Status, ready.Reason = v1alpha1.LoadFailed, metav1.ConditionFalse, "LoadFailed"
			ready.Message = runErr.Error()
		}
		meta.SetStatusCondition(&st.Conditions, ready)
	})
}

// Err is the last progress write's error.
func (r *LoadReporter) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

func setProgress(st *v1alpha1.DataLoadStatus, p wire.LoadProgress) {
	st.FilesDone, st.FilesTotal = p.FilesDone, p.Files
	st.BytesDone, st.BytesTotal, st.BytesSkipped = p.BytesDone, p.Bytes, p.BytesSkipped
	st.FailureCount = p.Failed
	switch {
	case p.Bytes > 0:
		st.Progress = fmt.Sprintf("%.1f%%", 100*float64(p.BytesDone)/float64(p.Bytes))
	case p.Files > 0:
		st.Progress = fmt.Sprintf("%.1f%%", 100*float64(p.FilesDone)/float64(p.Files))
	case p.State == wire.LoadDone:
		st.Progress = "100.0%"
	}
	st.Rate = human(int64(p.Rate)) + "/s"
}

// write reads the DataLoad, changes its status and writes it back with a
// merge patch of the status alone (the operator writes the phase too).
func (r *LoadReporter) write(ctx context.Context, change func(*v1alpha1.DataLoadStatus)) error {
	var dl v1alpha1.DataLoad
	if err := r.c.Get(ctx, r.name, &dl); err != nil {
		return fmt.Errorf("DataLoad %s: %w", r.name, err)
	}
	orig := dl.DeepCopy()
	change(&dl.Status)
	if err := r.c.Status().Patch(ctx, &dl, client.MergeFrom(orig)); err != nil {
		return fmt.Errorf("DataLoad %s: write status: %w", r.name, err)
	}
	return nil
}
