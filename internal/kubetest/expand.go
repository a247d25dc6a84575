package kubetest

import "strings"

// Expand replaces the references $(NAME) in s the way Kubernetes expands a
// container's command, args, env values and subPathExpr:
//
//   - $(NAME) becomes lookup(NAME) when lookup knows NAME, and stays as
//     written ("$(NAME)") when it does not;
//   - $$ becomes a single $, so $$(NAME) is the literal text "$(NAME)";
//   - a $ followed by anything else, or by an unclosed "(", stays as is,
//     as does a $ at the end.
//
// A name runs to the first ")" after "$(": it is not validated and
// references do not nest.
func Expand(s string, lookup func(name string) (string, bool)) string {
	if !strings.Contains(s, "$") {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '$' || i+1 == len(s) {
			b.WriteByte(c)
			continue
		}
		switch next := s[i+1]; next {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				// Unclosed: "$(" is kept and scanning goes on after it.
				b.WriteString("$(")
				i++
				continue
			}
			name := s[i+2 : i+2+end]
			if v, ok := lookup(name); ok {
				b.WriteString(v)
			} else {
				b.WriteString("$(" + name + ")")
			}
			i += 2 + end
		default:
			b.WriteByte('$')
			b.WriteByte(next)
			i++
		}
	}
	return b.String()
}

// lookupIn looks names up in maps, the first that has the name winning.
func lookupIn(maps ...map[string]string) func(string) (string, bool) {
	return func(name string) (string, bool) {
		for _, m := range maps {
			if v, ok := m[name]; ok {
				return v, true
			}
		}
		return "", false
	}
}
