package client

import (
	"bufio"
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

// jsonLines decodes a stream of JSON values, one per line.
func jsonLines(r io.Reader) *json.Decoder {
	return json.NewDecoder(bufio.NewReaderSize(r, 64<<10))
}

func urlEscape(s string) string { return url.QueryEscape(s) }
