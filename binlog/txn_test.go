package binlog

import "testing"

func TestSeqNo(t *testing.T) {
	for _, c := range []struct {
		pos    string
		domain uint32
		want   int64
	}{
		{"1-1-42", 1, 42},
		{"1-1-42,2-2-7", 2, 7},
		{" 3-9-100 , 1-1-5", 3, 100},
		{"1-1-42", 2, 0},
		{"", 1, 0},
		{"garbage", 1, 0},
	} {
		if got := SeqNo(c.pos, c.domain); got != c.want {
			t.Errorf("SeqNo(%q, %d) = %d, want %d", c.pos, c.domain, got, c.want)
		}
	}
}
