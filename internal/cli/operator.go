package cli

import (
	"log/slog"
	"time"

	"github.com/go-logr/logr"
	"github.com/spf13/cobra"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/granary-cache/granary/internal/membership"
	"github.com/granary-cache/granary/internal/operator"
)

func newOperatorCmd(g *globals) *cobra.Command {
	var (
		o          operator.Options
		kubeconfig string
		pull       string
	)
	cmd := &cobra.Command{
		Use:   "operator",
		Short: "Run the Kubernetes operator: CacheRuntimes, Datasets and DataLoads become workers, volumes and loads",
		Long: `operator reconciles granary's custom resources (installed by the Helm chart):
a CacheRuntime becomes its workers (a DaemonSet, or a StatefulSet with
spec.replicas), their ConfigMap rendered from the CRs, a headless Service and
RBAC; a Dataset gets its status (UFS size and files, cached bytes and %, cache
capacity, hit ratio, read from the workers' Leases) and a PersistentVolume with
its claim; a DataLoad becomes a Job running granary load, which writes its
progress into the DataLoad's status. It finds the API server in its pod, or
through --kubeconfig / $KUBECONFIG.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := operator.ParsePullPolicy(pull)
			if err != nil {
				return err
			}
			o.Images.PullPolicy = p
			rc, err := membership.KubeConfig(kubeconfig)
			if err != nil {
				return err
			}
			log.SetLogger(logrFromSlog())
			if o.LeaderElectionNamespace == "" {
				o.LeaderElectionNamespace = membership.PodNamespace()
			}
			if o.Webhook.ServiceNamespace == "" {
				o.Webhook.ServiceNamespace = membership.PodNamespace()
			}
			return operator.Run(ctrl.SetupSignalHandler(), rc, o)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file (default $KUBECONFIG, then the pod's service account)")
	fl.StringVar(&o.Images.Default, "worker-image", "", "the image of workers and loaders")
	fl.StringVar(&o.Images.CephFS, "worker-image-cephfs", "", "the image of workers and loaders of CephFS datasets (with libcephfs; default --worker-image)")
	fl.StringVar(&pull, "image-pull-policy", "", "their pull policy: Always, IfNotPresent or Never")
	fl.StringVar(&o.MetricsAddr, "metrics-addr", ":8080", `the operator's /metrics ("0": off)`)
	fl.StringVar(&o.ProbeAddr, "health-addr", ":8081", "/healthz and /readyz")
	fl.BoolVar(&o.LeaderElect, "leader-elect", false, "run one active replica at a time (a Lease in --leader-election-namespace)")
	fl.StringVar(&o.LeaderElectionNamespace, "leader-election-namespace", "", "where the leader's Lease is (default: the pod's namespace)")
	fl.StringVar(&o.LeaderElectionID, "leader-election-id", "granary-operator", "the leader's Lease name")
	fl.DurationVar(&o.LeaseDuration, "leader-lease-duration", 15*time.Second, "how long a leader that stops renewing keeps the lead")
	fl.DurationVar(&o.RenewDeadline, "leader-renew-deadline", 10*time.Second, "how long the leader tries to renew before it gives up the lead")
	fl.DurationVar(&o.RetryPeriod, "leader-retry-period", 2*time.Second, "how often candidates try to take the lead")
	fl.StringSliceVar(&o.Namespaces, "namespace", nil, "watch only these namespaces (default: all)")
	fl.IntVar(&o.Webhook.Port, "webhook-port", 0, "serve the pod webhook (pods placed near their dataset's cache) on this port (0: off)")
	fl.StringVar(&o.Webhook.Host, "webhook-host", "", "the webhook's listening address (default: all)")
	fl.StringVar(&o.Webhook.CertDir, "webhook-cert-dir", "/tmp/granary-webhook-certs", "where the webhook's serving certificate is written")
	fl.StringVar(&o.Webhook.ServiceName, "webhook-service", "granary-webhook", "the webhook's Service (its DNS names are in the certificate)")
	fl.StringVar(&o.Webhook.ServiceNamespace, "webhook-service-namespace", "", "the Service's namespace, where the certificates' Secret is (default: the pod's)")
	fl.StringVar(&o.Webhook.SecretName, "webhook-secret", "", "the Secret of the webhook's CA and certificate (default SERVICE-certs)")
	fl.StringVar(&o.Webhook.ConfigName, "webhook-config", "granary-pod-placement", "the MutatingWebhookConfiguration whose caBundle the operator keeps current (made if missing)")
	fl.StringVar(&o.Webhook.URL, "webhook-url", "", "https URL the API server calls instead of the Service, in a configuration the operator makes")
	return cmd
}

// logrFromSlog routes controller-runtime's logs to granary's logger.
func logrFromSlog() logr.Logger { return logr.FromSlogHandler(slog.Default().Handler()) }
