package change

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Vector is a version vector: per region, the stamp of the latest write of
// that region this version has seen (absent entries are zero). Every
// region's writes to one row are stamped strictly increasing (the triggers
// stamp each new version above the one it replaces), so one version has
// seen another exactly when its vector dominates the other's.
type Vector map[uint16]uint64

// Order is how two vectors relate.
type Order int8

const (
	// Equal: the same history.
	Equal Order = iota
	// Before: the first has seen less than the second (the second is
	// causally later).
	Before
	// After: the first has seen more (it is causally later).
	After
	// Concurrent: each has seen a write the other has not.
	Concurrent
)

func (o Order) String() string {
	return [...]string{"equal", "before", "after", "concurrent"}[o]
}

// Compare relates v to w.
func (v Vector) Compare(w Vector) Order {
	less, more := false, false
	for r, a := range v {
		if b := w[r]; a > b {
			more = true
		} else if a < b {
			less = true
		}
	}
	for r, b := range w {
		if _, ok := v[r]; !ok && b > 0 {
			less = true
		}
	}
	switch {
	case less && more:
		return Concurrent
	case less:
		return Before
	case more:
		return After
	}
	return Equal
}

// Join is the entrywise maximum of v and w, as a new vector.
func (v Vector) Join(w Vector) Vector {
	j := make(Vector, max(len(v), len(w)))
	for r, a := range v {
		j[r] = a
	}
	for r, b := range w {
		if b > j[r] {
			j[r] = b
		}
	}
	return j
}

// Max is the highest stamp in v (0 for none).
func (v Vector) Max() uint64 {
	var m uint64
	for _, s := range v {
		m = max(m, s)
	}
	return m
}

// Clone copies v.
func (v Vector) Clone() Vector {
	c := make(Vector, len(v))
	for r, s := range v {
		c[r] = s
	}
	return c
}

// Birth names the first version of a row's lineage (first-writer-wins
// orders concurrent lineages by it). Later versions inherit it, also
// across a delete and re-insert while the tombstone lives.
type Birth struct {
	Stamp  uint64
	Origin Origin
}

// Meta is a version's _mlr_vv: its vector and what its table's rule needs.
//
// Encoded as compact JSON (docs/internals.md), so that the server-side
// triggers can maintain it with JSON_SET:
//
//	{"1":<stamp>,"2":<stamp>,"b":[<stamp>,<origin>],"c":{"<col>":{"2":<n>}},"m":{"<col>":<v>},"w":{"1":<stamp>}}
//
// Numeric keys are the vector's entries. "b" is the lineage's Birth
// (first-writer-wins tables). "c" holds a counter column's per-region
// contributions for every region except the one whose server stores the
// version (its own contribution is the column's value minus the others:
// local writes never touch "c"). "m" is only in tombstones: the merge
// columns' values when the row was deleted. "w" is Own.
type Meta struct {
	VV Vector
	// Own is, for a version an applier merged, the winning version's own
	// vector, which origin-priority ranks by (VV is the join of both);
	// nil when it equals VV. Local writes drop it.
	Own     Vector
	Birth   Birth
	Contrib map[string]map[uint16]string
	Values  map[string]any
}

// ParseMeta decodes a _mlr_vv value (string or []byte from a row image or a
// driver; nil or empty is the empty Meta).
func ParseMeta(v any) (Meta, error) {
	var raw []byte
	switch x := v.(type) {
	case nil:
	case string:
		raw = []byte(x)
	case []byte:
		raw = x
	default:
		return Meta{}, fmt.Errorf("%s: unexpected type %T", ColMeta, v)
	}
	m := Meta{VV: Vector{}}
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return m, nil
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(raw, &top); err != nil {
		return Meta{}, fmt.Errorf("%s: %w", ColMeta, err)
	}
	for k, val := range top {
		switch k {
		case "b":
			var b [2]uint64
			if err := json.Unmarshal(val, &b); err != nil {
				return Meta{}, fmt.Errorf("%s: birth: %w", ColMeta, err)
			}
			m.Birth = Birth{Stamp: b[0], Origin: Origin(b[1])}
		case "c":
			var cs map[string]map[string]json.Number
			if err := unmarshalNumbers(val, &cs); err != nil {
				return Meta{}, fmt.Errorf("%s: contributions: %w", ColMeta, err)
			}
			m.Contrib = make(map[string]map[uint16]string, len(cs))
			for col, per := range cs {
				pm := make(map[uint16]string, len(per))
				for r, n := range per {
					id, err := strconv.ParseUint(r, 10, 16)
					if err != nil {
						return Meta{}, fmt.Errorf("%s: contribution of region %q: %w", ColMeta, r, err)
					}
					pm[uint16(id)] = n.String()
				}
				m.Contrib[col] = pm
			}
		case "w":
			var w map[string]uint64
			if err := json.Unmarshal(val, &w); err != nil {
				return Meta{}, fmt.Errorf("%s: own vector: %w", ColMeta, err)
			}
			m.Own = make(Vector, len(w))
			for r, st := range w {
				id, err := strconv.ParseUint(r, 10, 16)
				if err != nil {
					return Meta{}, fmt.Errorf("%s: own vector entry %q: %w", ColMeta, r, err)
				}
				m.Own[uint16(id)] = st
			}
		case "m":
			var vs map[string]any
			if err := unmarshalNumbers(val, &vs); err != nil {
				return Meta{}, fmt.Errorf("%s: values: %w", ColMeta, err)
			}
			m.Values = make(map[string]any, len(vs))
			for col, x := range vs {
				if n, ok := x.(json.Number); ok {
					x = n.String()
				}
				m.Values[col] = x
			}
		default:
			id, err := strconv.ParseUint(k, 10, 16)
			if err != nil {
				continue // a key of a later version: ignored
			}
			s, err := strconv.ParseUint(string(val), 10, 64)
			if err != nil {
				return Meta{}, fmt.Errorf("%s: entry of region %d: %w", ColMeta, id, err)
			}
			m.VV[uint16(id)] = s
		}
	}
	return m, nil
}

func unmarshalNumbers(raw []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	return d.Decode(v)
}

// Encode is m's canonical encoding: keys sorted (regions numerically),
// no spaces, empty parts left out.
func (m Meta) Encode() string {
	var b strings.Builder
	b.WriteByte('{')
	first := true
	sep := func() {
		if !first {
			b.WriteByte(',')
		}
		first = false
	}
	for _, r := range sortedRegions(m.VV) {
		if m.VV[r] == 0 {
			continue
		}
		sep()
		fmt.Fprintf(&b, "%q:%d", strconv.Itoa(int(r)), m.VV[r])
	}
	if m.Birth != (Birth{}) {
		sep()
		fmt.Fprintf(&b, `"b":[%d,%d]`, m.Birth.Stamp, uint32(m.Birth.Origin))
	}
	if len(m.Contrib) > 0 {
		sep()
		b.WriteString(`"c":{`)
		for i, col := range sortedKeys(m.Contrib) {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(jsonString(col) + ":{")
			per := m.Contrib[col]
			for j, r := range sortedRegions(per) {
				if j > 0 {
					b.WriteByte(',')
				}
				fmt.Fprintf(&b, "%q:%s", strconv.Itoa(int(r)), jsonNumber(per[r]))
			}
			b.WriteByte('}')
		}
		b.WriteByte('}')
	}
	if len(m.Values) > 0 {
		sep()
		b.WriteString(`"m":{`)
		for i, col := range sortedKeys(m.Values) {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(jsonString(col) + ":" + jsonValue(m.Values[col]))
		}
		b.WriteByte('}')
	}
	if len(m.Own) > 0 {
		sep()
		b.WriteString(`"w":{`)
		for i, r := range sortedRegions(m.Own) {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, "%q:%d", strconv.Itoa(int(r)), m.Own[r])
		}
		b.WriteByte('}')
	}
	b.WriteByte('}')
	return b.String()
}

func sortedRegions[V any](m map[uint16]V) []uint16 {
	rs := make([]uint16, 0, len(m))
	for r := range m {
		rs = append(rs, r)
	}
	slices.Sort(rs)
	return rs
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// jsonNumber writes a decimal text as a JSON number ("0" when it is not one).
func jsonNumber(s string) string {
	if json.Valid([]byte(s)) {
		if _, err := strconv.ParseFloat(s, 64); err == nil {
			return s
		}
	}
	return "0"
}

// jsonValue writes a column value: numbers as numbers, text as strings.
func jsonValue(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case string:
		return jsonString(x)
	case []byte:
		return jsonString(string(x))
	case int64, uint64, int, int32, uint32, int16, uint16, int8, uint8:
		return fmt.Sprint(x)
	case float64, float32:
		b, err := json.Marshal(x)
		if err != nil {
			return "null"
		}
		return string(b)
	}
	return jsonString(fmt.Sprint(v))
}
