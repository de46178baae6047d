package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"time"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
)

// Load reads the file at path and returns its configuration with defaults
// applied and validated (see Parse).
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load config: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes data, the contents of the file at path, strictly: an
// unknown key, a value of the wrong type (a float for an integer, a
// duration without a unit, a mapping for a string) or a YAML syntax error is
// an error. It then expands ${ENV_NAME} in password fields, resolves TLS file
// paths relative to the file's directory, applies Default and runs Validate.
//
// On failure the error is an Errors holding every problem found, each
// naming path, line and key; the returned *Config is then nil. Problems of
// form (syntax, unknown keys, types) are reported without the checks of
// meaning, which would only add noise about a file that was misread. path is used
// for messages and to resolve relative TLS paths; it is not read.
func Parse(path string, data []byte) (*Config, error) {
	c, errs := decode(path, data)
	if len(errs) > 0 {
		return nil, errs.err()
	}
	errs = append(errs, c.expandEnv(os.LookupEnv)...)
	c.resolveFiles(filepath.Dir(path))
	c.Default()
	errs = append(errs, c.validate()...)
	if err := errs.err(); err != nil {
		return nil, err
	}
	return c, nil
}

// decode parses data into a Config and records the line of every key.
func decode(path string, data []byte) (*Config, Errors) {
	w := &walker{file: path, lines: map[string]int{}}
	f, err := parser.ParseBytes(data, 0)
	if err != nil {
		w.add(yamlErrorLine(err), "", "%s", yamlErrorMessage(err))
		return nil, w.errs
	}
	var body ast.Node
	for i, doc := range f.Docs {
		if doc == nil || doc.Body == nil {
			continue
		}
		if body != nil {
			w.add(nodeLine(doc.Body), "", "one YAML document per file expected, found document %d", i+1)
			return nil, w.errs
		}
		body = doc.Body
	}
	if body == nil {
		body = &ast.NullNode{}
	}
	w.walk(body, reflect.TypeFor[Config](), "")
	if len(w.errs) > 0 {
		return nil, w.errs
	}
	c := &Config{}
	if _, isNull := body.(*ast.NullNode); !isNull {
		// The walk above has already checked every key and type, so this is
		// a backstop: any disagreement is still reported with its line.
		if err := yaml.NodeToValue(body, c, yaml.Strict(), yaml.DisallowUnknownField()); err != nil {
			line := yamlErrorLine(err)
			w.add(line, w.keyAtLine(line), "%s", yamlErrorMessage(err))
			return nil, w.errs
		}
	}
	c.Path = path
	c.lines = w.lines
	for i := range c.Tables {
		c.Tables[i].Line = c.line(fmt.Sprintf("tables[%d]", i))
	}
	for i := range c.Peers {
		c.Peers[i].Line = c.line(fmt.Sprintf("peers[%d]", i))
	}
	return c, nil
}

// yamlErrorLine is the line goccy/go-yaml attached to err, or 0.
func yamlErrorLine(err error) int {
	var ye yaml.Error
	if errors.As(err, &ye) && ye.GetToken() != nil {
		return ye.GetToken().Position.Line
	}
	return 0
}

// yamlErrorMessage is err's message without goccy/go-yaml's source excerpt.
func yamlErrorMessage(err error) string {
	var ye yaml.Error
	if errors.As(err, &ye) {
		return ye.GetMessage()
	}
	return err.Error()
}

// walker checks a YAML tree against the Go types it will decode into,
// collecting every problem (goccy/go-yaml stops at the first, truncates
// 1.5 into an int, and reports a bad duration without a line).
type walker struct {
	file  string
	lines map[string]int // key path -> line of the key (or sequence entry)
	errs  Errors
}

func (w *walker) add(line int, key, format string, args ...any) {
	w.errs = append(w.errs, &Error{File: w.file, Line: line, Key: key, Msg: fmt.Sprintf(format, args...)})
}

// keyAtLine is the longest key path recorded at line, or "".
func (w *walker) keyAtLine(line int) string {
	best := ""
	for k, l := range w.lines {
		if l == line && len(k) > len(best) {
			best = k
		}
	}
	return best
}

var durationType = reflect.TypeFor[time.Duration]()

func (w *walker) walk(n ast.Node, t reflect.Type, path string) {
	for {
		switch v := n.(type) {
		case *ast.AnchorNode:
			n = v.Value
			continue
		case *ast.TagNode:
			n = v.Value
			continue
		case *ast.AliasNode:
			return // checked where the anchor is defined
		}
		break
	}
	if n == nil {
		return
	}
	if _, isNull := n.(*ast.NullNode); isNull {
		return // zero value; required keys are Validate's business
	}
	line := nodeLine(n)
	if t == durationType {
		s, ok := n.(*ast.StringNode)
		if !ok {
			w.add(line, path, "want a duration with a unit such as \"500ms\" or \"30s\", got %s", describe(n))
			return
		}
		if _, err := time.ParseDuration(s.Value); err != nil {
			w.add(line, path, "invalid duration %q: want a number with a unit such as \"500ms\" or \"30s\"", s.Value)
		}
		return
	}
	switch t.Kind() {
	case reflect.Pointer:
		w.walk(n, t.Elem(), path)
	case reflect.Struct:
		w.walkStruct(n, t, path)
	case reflect.Slice:
		seq, ok := n.(*ast.SequenceNode)
		if !ok {
			w.add(line, path, "want a list, got %s", describe(n))
			return
		}
		for i, v := range seq.Values {
			p := fmt.Sprintf("%s[%d]", path, i)
			w.lines[p] = nodeLine(v)
			if i < len(seq.Entries) && seq.Entries[i] != nil && seq.Entries[i].Start != nil {
				w.lines[p] = seq.Entries[i].Start.Position.Line
			}
			w.walk(v, t.Elem(), p)
		}
	case reflect.String:
		switch n.(type) {
		case *ast.StringNode, *ast.LiteralNode, *ast.IntegerNode, *ast.FloatNode, *ast.BoolNode:
		default:
			w.add(line, path, "want a string, got %s", describe(n))
		}
	case reflect.Bool:
		if _, ok := n.(*ast.BoolNode); !ok {
			w.add(line, path, "want true or false, got %s", describe(n))
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		in, ok := n.(*ast.IntegerNode)
		if !ok {
			w.add(line, path, "want an integer, got %s", describe(n))
			return
		}
		z := reflect.New(t).Elem()
		switch v := in.Value.(type) {
		case int64:
			if z.OverflowInt(v) {
				w.add(line, path, "integer %d out of range", v)
			}
		case uint64:
			if v > 1<<63-1 || z.OverflowInt(int64(v)) {
				w.add(line, path, "integer %d out of range", v)
			}
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		in, ok := n.(*ast.IntegerNode)
		if !ok {
			w.add(line, path, "want an integer, got %s", describe(n))
			return
		}
		z := reflect.New(t).Elem()
		switch v := in.Value.(type) {
		case int64:
			if v < 0 {
				w.add(line, path, "must not be negative, got %d", v)
			} else if z.OverflowUint(uint64(v)) {
				w.add(line, path, "integer %d out of range 0..%d", v, maxUint(t))
			}
		case uint64:
			if z.OverflowUint(v) {
				w.add(line, path, "integer %d out of range 0..%d", v, maxUint(t))
			}
		}
	}
}

func maxUint(t reflect.Type) uint64 { return 1<<(t.Bits()) - 1 }

func (w *walker) walkStruct(n ast.Node, t reflect.Type, path string) {
	var values []*ast.MappingValueNode
	switch m := n.(type) {
	case *ast.MappingNode:
		values = m.Values
	case *ast.MappingValueNode:
		values = []*ast.MappingValueNode{m}
	default:
		w.add(nodeLine(n), path, "want a mapping, got %s", describe(n))
		return
	}
	fields := map[string]reflect.StructField{}
	var known []string
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" || !f.IsExported() {
			continue
		}
		fields[name] = f
		known = append(known, name)
	}
	for _, mv := range values {
		line := nodeLine(mv.Key)
		if mv.Key.IsMergeKey() {
			w.add(line, path, "merge keys (<<) are not supported")
			continue
		}
		key := mv.Key.GetToken().Value
		p := key
		if path != "" {
			p = path + "." + key
		}
		f, ok := fields[key]
		if !ok {
			w.add(line, p, "unknown key (known keys here: %s)", strings.Join(known, ", "))
			continue
		}
		w.lines[p] = line
		w.walk(mv.Value, f.Type, p)
	}
}

func nodeLine(n ast.Node) int {
	if n == nil || n.GetToken() == nil {
		return 0
	}
	return n.GetToken().Position.Line
}

func describe(n ast.Node) string {
	switch v := n.(type) {
	case *ast.MappingNode, *ast.MappingValueNode:
		return "a mapping"
	case *ast.SequenceNode:
		return "a list"
	case *ast.StringNode:
		return fmt.Sprintf("string %q", v.Value)
	case *ast.IntegerNode:
		return fmt.Sprintf("integer %v", v.Value)
	case *ast.FloatNode:
		return fmt.Sprintf("number %v", v.Value)
	case *ast.BoolNode:
		return fmt.Sprintf("boolean %v", v.Value)
	default:
		return n.Type().String()
	}
}

// envRef matches a whole value of the form ${NAME}.
var envRef = regexp.MustCompile(`^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$`)

// expandEnv replaces password values of the form ${NAME} by the
// environment variable NAME, so configuration files need hold no secrets.
// A variable that is not set, or a value that holds "${" in any other form,
// is an error naming the key (never the value).
func (c *Config) expandEnv(lookup func(string) (string, bool)) Errors {
	var errs Errors
	expand := func(key string, p *string) {
		if !strings.Contains(*p, "${") {
			return
		}
		m := envRef.FindStringSubmatch(*p)
		if m == nil {
			errs = append(errs, c.errorAt(key, "a password from the environment is written as the whole value \"${NAME}\""))
			return
		}
		v, ok := lookup(m[1])
		if !ok {
			errs = append(errs, c.errorAt(key, "environment variable %s is not set", m[1]))
			return
		}
		*p = v
	}
	expand("local.password", &c.Local.Password)
	for i := range c.Peers {
		expand(fmt.Sprintf("peers[%d].server.password", i), &c.Peers[i].Server.Password)
	}
	return errs
}

// resolveFiles makes relative TLS file paths relative to dir, the
// directory of the configuration file, so a config works from any cwd.
func (c *Config) resolveFiles(dir string) {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	client := func(t *TLSClient) {
		if t != nil {
			abs(&t.CA)
			abs(&t.Cert)
			abs(&t.Key)
		}
	}
	if t := c.Proxy.TLS; t != nil {
		abs(&t.Cert)
		abs(&t.Key)
		abs(&t.CA)
	}
	client(c.Local.TLS)
	client(c.Proxy.Forward.TLS)
	for i := range c.Peers {
		client(c.Peers[i].Server.TLS)
	}
}

// line is the line of key in the file, or of its nearest ancestor that is
// present; 1 when none is, 0 for a Config built in code.
func (c *Config) line(key string) int {
	if c.lines == nil {
		return 0
	}
	for p := key; p != ""; p = parentKey(p) {
		if l, ok := c.lines[p]; ok {
			return l
		}
	}
	return 1
}

// has reports whether key is written in the file.
func (c *Config) has(key string) bool {
	_, ok := c.lines[key]
	return ok
}

// parentKey strips the last ".name" or "[i]" from a key path.
func parentKey(p string) string {
	i := strings.LastIndexAny(p, ".[")
	if i < 0 {
		return ""
	}
	return p[:i]
}

func (c *Config) errorAt(key, format string, args ...any) *Error {
	return &Error{File: c.Path, Line: c.line(key), Key: key, Msg: fmt.Sprintf(format, args...)}
}
