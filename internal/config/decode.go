package config

import (
	"encoding"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Error is one problem in a configuration, located by file, line and field
// path (such as "datasets[1].options.secret_key").
type Error struct {
	File  string
	Line  int
	Field string
	Msg   string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Field != "" {
		b.WriteString(": " + e.Field)
	}
	b.WriteString(": " + e.Msg)
	return b.String()
}

// decoder maps a YAML node tree onto Go structs strictly: unknown and
// duplicate keys and wrong types are errors that carry the line and field
// path. It records the line of every field it sets so that later checks can
// point at the offending line too. yaml.v3's own decoder reports neither the
// field path nor more than one problem at a time.
type decoder struct {
	file  string
	errs  []error
	lines map[string]int
}

func (d *decoder) fail(n *yaml.Node, field, format string, args ...any) {
	line := 0
	if n != nil {
		line = n.Line
	}
	d.errs = append(d.errs, &Error{File: d.file, Line: line, Field: field, Msg: fmt.Sprintf(format, args...)})
}

var textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()

func (d *decoder) decode(n *yaml.Node, v reflect.Value, field string) {
	for n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		n = n.Content[0]
	}
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	d.lines[field] = n.Line
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return // an empty value keeps the default
	}
	if reflect.PointerTo(v.Type()).Implements(textUnmarshaler) {
		if n.Kind != yaml.ScalarNode {
			d.fail(n, field, "expected a single value, found %s", kindName(n))
			return
		}
		if err := v.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(n.Value)); err != nil {
			d.fail(n, field, "%v", err)
		}
		return
	}
	switch v.Kind() {
	case reflect.Pointer: // an optional value: nil when not given
		elem := reflect.New(v.Type().Elem())
		d.decode(n, elem.Elem(), field)
		v.Set(elem)
	case reflect.Struct:
		d.decodeStruct(n, v, field)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.fail(n, field, "expected a list, found %s", kindName(n))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			d.decode(item, s.Index(i), fmt.Sprintf("%s[%d]", field, i))
		}
		v.Set(s)
	case reflect.Map:
		d.decodeMap(n, v, field)
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			d.fail(n, field, "expected a string, found %s", kindName(n))
			return
		}
		v.SetString(n.Value)
	case reflect.Bool:
		b, err := strconv.ParseBool(n.Value)
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" || err != nil {
			d.fail(n, field, "expected true or false, found %s", describe(n))
			return
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int64:
		i, err := strconv.ParseInt(n.Value, 0, 64)
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" || err != nil {
			d.fail(n, field, "expected an integer, found %s", describe(n))
			return
		}
		v.SetInt(i)
	case reflect.Float64:
		f, err := strconv.ParseFloat(n.Value, 64)
		if n.Kind != yaml.ScalarNode || (n.ShortTag() != "!!int" && n.ShortTag() != "!!float") || err != nil {
			d.fail(n, field, "expected a number, found %s", describe(n))
			return
		}
		v.SetFloat(f)
	default:
		panic(fmt.Sprintf("config: no YAML decoding for %s (%s)", v.Type(), field))
	}
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, field string) {
	if n.Kind != yaml.MappingNode {
		d.fail(n, field, "expected a mapping of keys to values, found %s", kindName(n))
		return
	}
	fields := map[string]int{}
	var known []string
	for i := range v.NumField() {
		tag, _, _ := strings.Cut(v.Type().Field(i).Tag.Get("yaml"), ",")
		if tag != "" && tag != "-" {
			fields[tag] = i
			known = append(known, tag)
		}
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		sub := join(field, k.Value)
		idx, ok := fields[k.Value]
		switch {
		case k.Kind != yaml.ScalarNode:
			d.fail(k, field, "a key must be a plain name, found %s", kindName(k))
		case !ok:
			d.fail(k, sub, "unknown field (known fields: %s)", strings.Join(known, ", "))
		case seen[k.Value]:
			d.fail(k, sub, "given twice")
		default:
			seen[k.Value] = true
			d.decode(val, v.Field(idx), sub)
		}
	}
}

func (d *decoder) decodeMap(n *yaml.Node, v reflect.Value, field string) {
	if n.Kind != yaml.MappingNode {
		d.fail(n, field, "expected a mapping of keys to values, found %s", kindName(n))
		return
	}
	if v.Type().Key().Kind() != reflect.String {
		panic("config: only maps with string keys are supported")
	}
	m := reflect.MakeMapWithSize(v.Type(), len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		sub := join(field, k.Value)
		if k.Kind != yaml.ScalarNode {
			d.fail(k, field, "a key must be a plain name, found %s", kindName(k))
			continue
		}
		if m.MapIndex(reflect.ValueOf(k.Value)).IsValid() {
			d.fail(k, sub, "given twice")
			continue
		}
		elem := reflect.New(v.Type().Elem()).Elem()
		d.decode(val, elem, sub)
		m.SetMapIndex(reflect.ValueOf(k.Value), elem)
	}
	v.Set(m)
}

func join(field, key string) string {
	if field == "" {
		return key
	}
	return field + "." + key
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return describe(n)
	}
	return "an unexpected YAML node"
}

func describe(n *yaml.Node) string {
	if n.Kind != yaml.ScalarNode {
		return kindName(n)
	}
	q := strconv.Quote(n.Value)
	if slices.Contains([]string{"!!int", "!!float", "!!bool"}, n.ShortTag()) {
		q = n.Value
	}
	return q
}
