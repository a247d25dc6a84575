package operator

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/go-logr/logr"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=mutatingwebhookconfigurations,verbs=get;list;watch;create;update;patch

// WebhookOptions configure the pod webhook (Options.Webhook); Port 0 turns
// it off.
type WebhookOptions struct {
	// Host and Port are where the webhook server listens (Host "": all
	// addresses).
	Host string
	Port int
	// CertDir is where the serving certificate is written (tls.crt,
	// tls.key) for the server to load.
	CertDir string
	// ServiceName and ServiceNamespace are the webhook's Service: its DNS
	// names go into the serving certificate, and the Secret of the
	// certificates is in its namespace.
	ServiceName, ServiceNamespace string
	// SecretName holds the CA and the serving certificate (default
	// SERVICE-certs).
	SecretName string
	// ConfigName is the MutatingWebhookConfiguration whose caBundle the
	// leader keeps up to date (and which it makes, if missing).
	ConfigName string
	// URL, when set, is the clientConfig.url of a configuration the
	// operator makes, instead of the Service (for an API server that
	// cannot reach Services); its host goes into the certificate too.
	URL string
	// CAValidity and CertValidity are the lifetimes of the CA and the
	// serving certificate (default 1 year, 90 days); each is renewed at two
	// thirds of it.
	CAValidity, CertValidity time.Duration
	// CheckEvery is how often the certificates are checked (default 1m).
	CheckEvery time.Duration
	// MaxNodes bounds a pod's preferred terms (default 10).
	MaxNodes int
}

func (w *WebhookOptions) setDefaults() error {
	if w.ServiceName == "" {
		w.ServiceName = "granary-webhook"
	}
	if w.ServiceNamespace == "" {
		return fmt.Errorf("webhook: no namespace of its Service")
	}
	if w.SecretName == "" {
		w.SecretName = w.ServiceName + "-certs"
	}
	if w.ConfigName == "" {
		w.ConfigName = "granary-pod-placement"
	}
	if w.CertDir == "" {
		return fmt.Errorf("webhook: no certificate directory")
	}
	if w.CAValidity <= 0 {
		w.CAValidity = DefaultWebhookCAValidity
	}
	if w.CertValidity <= 0 {
		w.CertValidity = DefaultWebhookCertValidity
	}
	if w.CheckEvery <= 0 {
		w.CheckEvery = time.Minute
	}
	return nil
}

// certNames are the serving certificate's names: the Service's, and the
// URL's host.
func (w *WebhookOptions) certNames() ([]string, error) {
	s, ns := w.ServiceName, w.ServiceNamespace
	names := []string{s + "." + ns + ".svc", s, s + "." + ns, s + "." + ns + ".svc.cluster.local"}
	if w.URL != "" {
		u, err := url.Parse(w.URL)
		if err != nil || u.Scheme != "https" || u.Hostname() == "" {
			return nil, fmt.Errorf("webhook URL %q: expected https://HOST[:PORT][/PATH]", w.URL)
		}
		names = append(names, u.Hostname())
	}
	return names, nil
}

// splitHosts separates DNS names from IP addresses.
func splitHosts(names []string) (dns []string, ips []net.IP) {
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			ips = append(ips, ip)
		} else {
			dns = append(dns, n)
		}
	}
	return dns, ips
}

// webhookConfig is the configuration the operator makes when none is
// there: pods being created, outside kube-system and kube-node-lease and
// not granary's own, to the webhook, which may fail without stopping them.
func (w *WebhookOptions) webhookConfig(caBundle []byte) *admissionregistrationv1.MutatingWebhookConfiguration {
	ignore := admissionregistrationv1.Ignore
	none := admissionregistrationv1.SideEffectClassNone
	never := admissionregistrationv1.NeverReinvocationPolicy
	scope := admissionregistrationv1.NamespacedScope
	timeout := int32(5)
	cc := admissionregistrationv1.WebhookClientConfig{CABundle: caBundle}
	if w.URL != "" {
		u := strings.TrimSuffix(w.URL, "/") + WebhookPath
		cc.URL = &u
	} else {
		path, port := WebhookPath, int32(443)
		cc.Service = &admissionregistrationv1.ServiceReference{Namespace: w.ServiceNamespace, Name: w.ServiceName, Path: &path, Port: &port}
	}
	return &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: w.ConfigName, Labels: map[string]string{"app.kubernetes.io/managed-by": "granary-operator"}},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:         "pods.webhook.granary.io",
			ClientConfig: cc,
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
				Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}, Scope: &scope},
			}},
			FailurePolicy:      &ignore,
			SideEffects:        &none,
			TimeoutSeconds:     &timeout,
			ReinvocationPolicy: &never,
			NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
				{Key: corev1.LabelMetadataName, Operator: metav1.LabelSelectorOpNotIn, Values: []string{"kube-system", "kube-node-lease"}}}},
			ObjectSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
				{Key: "app.kubernetes.io/name", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"granary"}}}},
			AdmissionReviewVersions: []string{"v1"},
		}},
	}
}

// setupWebhook makes sure the serving certificate is on disk before the
// server starts (it will not start without), and adds the pod webhook and
// the runnables that keep the certificates fresh.
func setupWebhook(ctx context.Context, mgr manager.Manager, direct client.Client, w WebhookOptions) error {
	names, err := w.certNames()
	if err != nil {
		return err
	}
	cm := &certManager{opts: w, names: names, client: direct, log: logf.Log.WithName("webhook-certs")}
	b, err := cm.syncSecret(ctx, false)
	if err == nil {
		err = cm.writeFiles(b)
	}
	if err != nil {
		return fmt.Errorf("webhook certificates: %w", err)
	}
	mgr.GetWebhookServer().Register(WebhookPath, &webhook.Admission{Handler: &PodPlacer{
		Client: mgr.GetClient(), Decoder: admission.NewDecoder(mgr.GetScheme()), MaxNodes: w.MaxNodes}})
	return mgr.Add(&certLoop{cm: cm, elected: mgr.Elected()})
}

// certManager keeps the Secret, the files and the caBundle in step.
type certManager struct {
	opts   WebhookOptions
	names  []string
	client client.Client // uncached: the operator does not watch Secrets
	log    logr.Logger
	now    func() time.Time
}

func (c *certManager) clock() time.Time {
	if c.now != nil {
		return c.now()
	}
	return time.Now()
}

// syncSecret reads the Secret (making it when missing) and renews what is
// due when rotateDue is set. It returns the bundle as the Secret has it.
func (c *certManager) syncSecret(ctx context.Context, rotateDue bool) (certBundle, error) {
	key := types.NamespacedName{Namespace: c.opts.ServiceNamespace, Name: c.opts.SecretName}
	var sec corev1.Secret
	err := c.client.Get(ctx, key, &sec)
	if apierrors.IsNotFound(err) {
		var b certBundle
		b, err = rotate(certBundle{}, certRotation{CA: true, Serving: true}, c.names, c.clock(), c.opts.CAValidity, c.opts.CertValidity)
		if err != nil {
			return certBundle{}, err
		}
		sec = corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: key.Name, Namespace: key.Namespace,
			Labels: map[string]string{"app.kubernetes.io/managed-by": "granary-operator"}}, Data: b.secretData()}
		err = c.client.Create(ctx, &sec)
		if apierrors.IsAlreadyExists(err) { // another replica made it first
			err = c.client.Get(ctx, key, &sec)
		} else if err == nil {
			c.log.Info("made the webhook's CA and serving certificate", "secret", key.String())
		}
	}
	if err != nil {
		return certBundle{}, fmt.Errorf("the Secret %s: %w", key, err)
	}
	b := bundleFromSecret(sec.Data)
	if r := needsRotation(b, c.names, c.clock()); rotateDue && (r.CA || r.Serving || r.Reason != "") {
		nb, err := rotate(b, r, c.names, c.clock(), c.opts.CAValidity, c.opts.CertValidity)
		if err != nil {
			return certBundle{}, err
		}
		sec.Data = nb.secretData()
		if err := c.client.Update(ctx, &sec); err != nil { // a conflict waits for the next check
			return certBundle{}, fmt.Errorf("renew the certificates in Secret %s: %w", key, err)
		}
		c.log.Info("renewed the webhook's certificates", "reason", r.Reason, "ca", r.CA)
		b = nb
	}
	return b, nil
}

// writeFiles writes the serving pair to disk.
func (c *certManager) writeFiles(b certBundle) error {
	wrote, err := writeCertFiles(c.opts.CertDir, b.Cert, b.Key)
	if err != nil {
		return fmt.Errorf("write the serving certificate: %w", err)
	}
	if wrote {
		c.log.Info("wrote the webhook's serving certificate", "dir", c.opts.CertDir)
	}
	return nil
}

// published reports whether the configuration trusts the CA (or is not
// there yet): a replica serves a certificate only once it does.
func (c *certManager) published(ctx context.Context, ca []byte) (bool, error) {
	var cfg admissionregistrationv1.MutatingWebhookConfiguration
	err := c.client.Get(ctx, types.NamespacedName{Name: c.opts.ConfigName}, &cfg)
	if apierrors.IsNotFound(err) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	for _, w := range cfg.Webhooks {
		if !bytes.Contains(w.ClientConfig.CABundle, ca) {
			return false, nil
		}
	}
	return true, nil
}

// patchConfig puts the bundle into every webhook of the configuration,
// making the configuration when missing; it reports whether it changed it.
func (c *certManager) patchConfig(ctx context.Context, bundle []byte) (bool, error) {
	var cfg admissionregistrationv1.MutatingWebhookConfiguration
	err := c.client.Get(ctx, types.NamespacedName{Name: c.opts.ConfigName}, &cfg)
	if apierrors.IsNotFound(err) {
		err = c.client.Create(ctx, c.opts.webhookConfig(bundle))
		if err != nil {
			return false, err
		}
		c.log.Info("made the MutatingWebhookConfiguration", "name", c.opts.ConfigName)
		return true, nil
	}
	if err != nil {
		return false, err
	}
	before := cfg.DeepCopy()
	changed := false
	for i := range cfg.Webhooks {
		if !bytes.Equal(cfg.Webhooks[i].ClientConfig.CABundle, bundle) {
			cfg.Webhooks[i].ClientConfig.CABundle = bundle
			changed = true
		}
	}
	if !changed {
		return false, nil
	}
	if err := c.client.Patch(ctx, &cfg, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
		return false, err
	}
	c.log.Info("updated the caBundle", "config", c.opts.ConfigName)
	return true, nil
}

// certLoop checks the certificates every CheckEvery, in every replica
// (every replica serves): the leader renews what is due and puts the CAs
// into the caBundle; each replica writes the Secret's serving pair to disk
// once the caBundle trusts its CA (the leader, a check after it changed the
// bundle, so that the API server has seen it).
type certLoop struct {
	cm      *certManager
	elected <-chan struct{}
}

// NeedLeaderElection: every replica runs the loop.
func (l *certLoop) NeedLeaderElection() bool { return false }

// Start runs the loop until ctx ends.
func (l *certLoop) Start(ctx context.Context) error {
	t := time.NewTicker(l.cm.opts.CheckEvery)
	defer t.Stop()
	for {
		if err := l.once(ctx); err != nil && ctx.Err() == nil {
			l.cm.log.Error(err, "webhook certificates")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (l *certLoop) leader() bool {
	select {
	case <-l.elected:
		return true
	default:
		return false
	}
}

func (l *certLoop) once(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	leader := l.leader()
	b, err := l.cm.syncSecret(ctx, leader)
	if err != nil {
		return err
	}
	if leader {
		changed, err := l.cm.patchConfig(ctx, b.Bundle)
		if err != nil || changed {
			return err
		}
	}
	ok, err := l.cm.published(ctx, b.CACert)
	if err != nil || !ok {
		return err
	}
	return l.cm.writeFiles(b)
}
