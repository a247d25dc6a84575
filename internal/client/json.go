package client

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"

	"github.com/granary-cache/granary/internal/wire"
)

// decodeJSON reads one JSON value; a malformed answer is the worker's fault.
func decodeJSON(r io.Reader, v any) error {
	if err := json.NewDecoder(io.LimitReader(r, 16<<20)).Decode(v); err != nil {
		return fmt.Errorf("%w: malformed answer: %v", wire.ErrWorker, err)
	}
	return nil
}

func urlEscape(s string) string { return url.QueryEscape(s) }
