// Package operator is granary's Kubernetes operator. It turns a
// CacheRuntime into workers (a DaemonSet, or a StatefulSet; their
// configuration rendered from the CRs; a headless Service; RBAC), a Dataset
// into its status and a PersistentVolume with its claim, and a DataLoad into
// a Job of `granary load` that reports its own progress. It reads what the
// workers publish on their Leases and never dials a pod.
package operator

import (
	"context"
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/granary-cache/granary/api/v1alpha1"
	"github.com/granary-cache/granary/internal/membership"
)

// Options configure the operator.
type Options struct {
	Images Images
	// MetricsAddr serves /metrics ("0" turns it off); ProbeAddr /healthz
	// and /readyz.
	MetricsAddr string
	ProbeAddr   string
	// LeaderElect makes one of several replicas act at a time;
	// LeaderElectionNamespace holds its Lease (default: the pod's).
	LeaderElect             bool
	LeaderElectionNamespace string
	LeaderElectionID        string
	// LeaseDuration, RenewDeadline, RetryPeriod tune leader election
	// (defaults 15s, 10s, 2s).
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// Namespaces limits what the operator watches (default: all).
	Namespaces []string
	// SkipNameValidation lets two operators run in one process (tests of
	// leader election); their metrics then share names.
	SkipNameValidation bool
	// Webhook is the pod webhook that places pods near their cache (off
	// while its Port is 0).
	Webhook WebhookOptions
}

// Scheme knows the kinds the operator handles.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err)
	}
	if err := v1alpha1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}

// New makes the operator's manager with its three controllers.
func New(cfg *rest.Config, o Options) (manager.Manager, error) {
	if o.Images.Default == "" {
		return nil, fmt.Errorf("no worker image: give --worker-image")
	}
	if o.LeaderElectionID == "" {
		o.LeaderElectionID = "granary-operator"
	}
	mo := ctrl.Options{
		Scheme:                        Scheme(),
		Metrics:                       metricsserver.Options{BindAddress: o.MetricsAddr},
		HealthProbeBindAddress:        o.ProbeAddr,
		LeaderElection:                o.LeaderElect,
		LeaderElectionID:              o.LeaderElectionID,
		LeaderElectionNamespace:       o.LeaderElectionNamespace,
		LeaderElectionReleaseOnCancel: true,
	}
	if o.SkipNameValidation {
		mo.Controller.SkipNameValidation = &o.SkipNameValidation
	}
	if o.LeaseDuration > 0 {
		mo.LeaseDuration, mo.RenewDeadline, mo.RetryPeriod = &o.LeaseDuration, &o.RenewDeadline, &o.RetryPeriod
	}
	// Of all Leases (every node has one), the operator caches its workers'
	// alone.
	workers, err := labels.Parse(membership.LabelCluster)
	if err != nil {
		return nil, err
	}
	mo.Cache.ByObject = map[client.Object]cache.ByObject{&coordinationv1.Lease{}: {Label: workers}}
	if len(o.Namespaces) > 0 {
		mo.Cache.DefaultNamespaces = map[string]cache.Config{}
		for _, ns := range o.Namespaces {
			mo.Cache.DefaultNamespaces[ns] = cache.Config{}
		}
	}
	if o.Webhook.Port != 0 {
		if err := o.Webhook.setDefaults(); err != nil {
			return nil, err
		}
		mo.WebhookServer = webhook.NewServer(webhook.Options{Host: o.Webhook.Host, Port: o.Webhook.Port, CertDir: o.Webhook.CertDir})
	}
	mgr, err := ctrl.NewManager(cfg, mo)
	if err != nil {
		return nil, fmt.Errorf("operator: %w", err)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return nil, err
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return nil, err
	}
	if err := (&RuntimeReconciler{Client: mgr.GetClient(), Images: o.Images, Recorder: mgr.GetEventRecorder("granary-runtime")}).SetupWithManager(mgr); err != nil {
		return nil, err
	}
	if err := (&DatasetReconciler{Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("granary-dataset")}).SetupWithManager(mgr); err != nil {
		return nil, err
	}
	if err := (&DataLoadReconciler{Client: mgr.GetClient(), Images: o.Images, Recorder: mgr.GetEventRecorder("granary-dataload")}).SetupWithManager(mgr); err != nil {
		return nil, err
	}
	if o.Webhook.Port != 0 {
		direct, err := client.New(cfg, client.Options{Scheme: mgr.GetScheme()})
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := setupWebhook(ctx, mgr, direct, o.Webhook); err != nil {
			return nil, err
		}
		if err := mgr.AddReadyzCheck("webhook", mgr.GetWebhookServer().StartedChecker()); err != nil {
			return nil, err
		}
	}
	return mgr, nil
}

// Run runs the operator until ctx ends.
func Run(ctx context.Context, cfg *rest.Config, o Options) error {
	mgr, err := New(cfg, o)
	if err != nil {
		return err
	}
	return mgr.Start(ctx)
}

// ParsePullPolicy checks an image pull policy.
func ParsePullPolicy(s string) (corev1.PullPolicy, error) {
	switch p := corev1.PullPolicy(s); p {
	case "", corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
		return p, nil
	}
	return "", fmt.Errorf("image pull policy %q: expected Always, IfNotPresent or Never", s)
}

func mustQuantity(s string) resource.Quantity { return resource.MustParse(s) }
