package s3

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strings"
	"sync"
	"time"
)

// signer signs requests with AWS Signature Version 4 for the hot path of
// reads (see get.go), the one path that does not go through the SDK. The
// signing key is derived once per day (it depends only on the date, the
// region and the service) and kept; a request costs two SHA-256 and one
// HMAC over a few hundred bytes.
//
// Only GET requests with no body and no query are signed, with the
// headers host, x-amz-content-sha256 and x-amz-date: that is all a ranged
// GET needs, and what S3, Ceph RGW and versitygw check.
type signer struct {
	access, secret, region string

	mu      sync.Mutex
	keyDate string // yyyymmdd of key
	key     []byte
}

// emptySHA256 is the hex SHA-256 of an empty payload.
const emptySHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

// signingKey is the day's key: HMAC chain over date, region, "s3" and
// "aws4_request", keyed by "AWS4" and the secret.
func (s *signer) signingKey(date string) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.keyDate != date {
		k := hmacSHA256([]byte("AWS4"+s.secret), date)
		k = hmacSHA256(k, s.region)
		k = hmacSHA256(k, "s3")
		s.key, s.keyDate = hmacSHA256(k, "aws4_request"), date
	}
	return s.key
}

func hmacSHA256(key []byte, data string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(data))
	return h.Sum(nil)
}

// sign adds the SigV4 headers to req, a GET of req.URL's escaped path
// with no query, as at now.
func (s *signer) sign(req *http.Request, now time.Time) {
	now = now.UTC()
	amzDate := now.Format("20060102T150405Z")
	date := amzDate[:8]
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	req.Header.Set("X-Amz-Date", amzDate)
	req.Header.Set("X-Amz-Content-Sha256", emptySHA256)

	var b strings.Builder
	b.Grow(256)
	b.WriteString("GET\n")
	b.WriteString(req.URL.EscapedPath())
	b.WriteString("\n\nhost:")
	b.WriteString(host)
	b.WriteString("\nx-amz-content-sha256:" + emptySHA256)
	b.WriteString("\nx-amz-date:")
	b.WriteString(amzDate)
	b.WriteString("\n\nhost;x-amz-content-sha256;x-amz-date\n" + emptySHA256)
	canonical := sha256.Sum256([]byte(b.String()))

	scope := date + "/" + s.region + "/s3/aws4_request"
	toSign := "AWS4-HMAC-SHA256\n" + amzDate + "\n" + scope + "\n" + hex.EncodeToString(canonical[:])
	sig := hex.EncodeToString(hmacSHA256(s.signingKey(date), toSign))
	req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential="+s.access+"/"+scope+
		", SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature="+sig)
}

// escapePath encodes an object key for a request path as S3 expects it:
// every byte but the unreserved characters and "/" percent-encoded, once.
func escapePath(key string) string {
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(key) + 16)
	for i := 0; i < len(key); i++ {
		c := key[i]
		if 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.' || c == '~' || c == '/' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&15])
	}
	return b.String()
}
