package s3

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// TestSignerMatchesSDK: the lean path's signatures are the SDK's own, for
// keys of every kind of character, on both addressing styles.
func TestSignerMatchesSDK(t *testing.T) {
	s := &signer{access: "AKIDEXAMPLE", secret: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", region: "eu-west-3"}
	sdk := v4.NewSigner(func(o *v4.SignerOptions) { o.DisableURIPathEscaping = true })
	creds := aws.Credentials{AccessKeyID: s.access, SecretAccessKey: s.secret}
	at := time.Date(2026, 12, 2, 23, 59, 58, 0, time.UTC)
	for _, o := range []Options{
		{Endpoint: "http://127.0.0.1:7070", PathStyle: true},
		{Endpoint: "http://rgw.example:80/prefix", PathStyle: true},
		{Endpoint: "https://[::1]:443"},
		{Endpoint: "https://s3.example:443"},
		{},
	} {
		o.Region = s.region
		l, err := newLean(o, "bucket", nil)
		if err != nil {
			t.Fatal(err)
		}
		base := l.base
		for _, key := range []string{"train/n01/img_0001.JPEG", "a b/ü+x=y&z?#%.dat", "dir/~tilde-_.ok", "sp ace/'quote'(1)*!$,;:@"} {
			ours, err := http.NewRequest(http.MethodGet, base+"/"+escapePath(key), nil)
			if err != nil {
				t.Fatal(err)
			}
			ours.Header.Set("Range", "bytes=0-99")
			s.sign(ours, at)

			theirs, _ := http.NewRequest(http.MethodGet, base+"/"+escapePath(key), nil)
			theirs.Header.Set("X-Amz-Content-Sha256", emptySHA256)
			if err := sdk.SignHTTP(context.Background(), creds, theirs, emptySHA256, "s3", s.region, at); err != nil {
				t.Fatal(err)
			}
			if got, want := ours.Header.Get("Authorization"), theirs.Header.Get("Authorization"); got != want {
				t.Errorf("%s %q:\n ours %s\n sdk  %s", base, key, got, want)
			}
			if ours.Header.Get("X-Amz-Date") != theirs.Header.Get("X-Amz-Date") {
				t.Errorf("x-amz-date %q, the SDK's %q", ours.Header.Get("X-Amz-Date"), theirs.Header.Get("X-Amz-Date"))
			}
		}
	}
}

// TestSigningKeyPerDay: the derived key is kept for a day and changes with
// the date.
func TestSigningKeyPerDay(t *testing.T) {
	s := &signer{access: "a", secret: "b", region: "us-east-1"}
	k1 := s.signingKey("20261202")
	if k2 := s.signingKey("20261202"); &k1[0] != &k2[0] {
		t.Error("the key was derived again the same day")
	}
	if k3 := s.signingKey("20261203"); string(k3) == string(k1) {
		t.Error("the same key on another day")
	}
}

func TestEscapePath(t *testing.T) {
	for in, want := range map[string]string{
		"a/b.c":      "a/b.c",
		"a b":        "a%20b",
		"ü":          "%C3%BC",
		"x+y=z&?#%~": "x%2By%3Dz%26%3F%23%25~",
	} {
		if got := escapePath(in); got != want {
			t.Errorf("escapePath(%q) = %q, want %q", in, got, want)
		}
	}
}
