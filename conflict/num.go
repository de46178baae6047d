package conflict

import (
	"math"
	"math/big"
	"strings"
)

// Column arithmetic for the merge rules, over values as go-mysql decodes
// them: int64/uint64 (and other Go integers) for integer columns, float32/64,
// string or []byte for DECIMAL (and temporal types), nil for NULL (counted as
// 0 by counter). Results keep the kind of the inputs: integers stay integers,
// decimals stay decimal strings with the larger scale. A value that is not a
// number makes the operation report !ok; the caller then keeps the lww value.

type numKind uint8

const (
	kInt numKind = iota
	kFloat
	kDec
)

type num struct {
	r     big.Rat
	kind  numKind
	scale int // digits after the point, for kDec
}

func toNum(v any) (num, bool) {
	var n num
	switch x := v.(type) {
	case nil:
		return n, true
	case int64:
		n.r.SetInt64(x)
	case int:
		n.r.SetInt64(int64(x))
	case int32:
		n.r.SetInt64(int64(x))
	case int16:
		n.r.SetInt64(int64(x))
	case int8:
		n.r.SetInt64(int64(x))
	case uint64:
		n.r.SetInt(new(big.Int).SetUint64(x))
	case uint32:
		n.r.SetInt64(int64(x))
	case uint16:
		n.r.SetInt64(int64(x))
	case uint8:
		n.r.SetInt64(int64(x))
	case uint:
		n.r.SetInt(new(big.Int).SetUint64(uint64(x)))
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return n, false
		}
		n.r.SetFloat64(x)
		n.kind = kFloat
	case float32:
		return toNum(float64(x))
	case string:
		return decNum(x)
	case []byte:
		return decNum(string(x))
	default:
		return n, false
	}
	return n, true
}

func decNum(s string) (num, bool) {
	var n num
	s = strings.TrimSpace(s)
	if s == "" || strings.ContainsAny(s, "eE/") {
		return n, false
	}
	if _, ok := n.r.SetString(s); !ok {
		return n, false
	}
	// Decimal text without a point (a DECIMAL(p,0) column, a stored
	// contribution) is an integer.
	if i := strings.IndexByte(s, '.'); i >= 0 {
		n.kind = kDec
		n.scale = len(s) - i - 1
	}
	return n, true
}

func combine(a, b num, r *big.Rat) any {
	kind := max(a.kind, b.kind)
	switch kind {
	case kFloat:
		f, _ := r.Float64()
		return f
	case kDec:
		return r.FloatString(max(a.scale, b.scale))
	}
	i := new(big.Int).Quo(r.Num(), r.Denom())
	if i.IsInt64() {
		return i.Int64()
	}
	if i.IsUint64() {
		return i.Uint64()
	}
	return i.String()
}

// delta is after - before.
func delta(after, before any) (any, bool) {
	a, ok1 := toNum(after)
	b, ok2 := toNum(before)
	if !ok1 || !ok2 {
		return nil, false
	}
	return combine(a, b, new(big.Rat).Sub(&a.r, &b.r)), true
}

// sum is a + b.
func sum(a, b any) (any, bool) {
	x, ok1 := toNum(a)
	y, ok2 := toNum(b)
	if !ok1 || !ok2 {
		return nil, false
	}
	return combine(x, y, new(big.Rat).Add(&x.r, &y.r)), true
}

// compare orders two column values: numerically when both are numbers,
// else as strings (temporal values as go-mysql formats them sort that
// way). NULL is below everything. !ok for values of other types.
func compare(a, b any) (int, bool) {
	switch {
	case a == nil && b == nil:
		return 0, true
	case a == nil:
		return -1, true
	case b == nil:
		return 1, true
	}
	if x, ok := toNum(a); ok {
		if y, ok := toNum(b); ok {
			return x.r.Cmp(&y.r), true
		}
	}
	sa, ok1 := str(a)
	sb, ok2 := str(b)
	if !ok1 || !ok2 {
		return 0, false
	}
	return strings.Compare(sa, sb), true
}

func str(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case []byte:
		return string(x), true
	}
	return "", false
}
