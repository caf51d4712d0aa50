package llmusage

import "bytes"

// sseParser parses a text/event-stream incrementally, as the WHATWG HTML
// "event stream interpretation" describes it, and feeds each event's data
// to a tally. Lines may be split anywhere across writes and end in CRLF, LF
// or CR; "data" fields are joined with "\n"; comments and other fields are
// skipped (every supported API repeats the event name inside the JSON, so
// "event" is not needed). An event still open when the stream ends is
// discarded, as the specification says.
//
// Memory is bounded by max: the bytes of the current event's lines (field
// names, comments and the partial line included) may not exceed it, or the
// whole event is skipped up to the blank line that ends it. The same bytes
// count whatever the chunking, so the result never depends on how the
// stream was split.
type sseParser struct {
	max int64

	bomSeen int  // leading bytes that matched the UTF-8 BOM so far
	started bool // past the optional BOM

	line    []byte // the partial line carried over from an earlier write
	partial bool   // while skipping: the current line has bytes
	afterCR bool   // the previous write ended in CR: drop a leading LF
	skip    bool   // the current event is over max and being skipped
	size    int64  // bytes of the current event's complete lines
	data    []byte // the current event's data, each line followed by "\n"

	t tally
}

const bom = "\xef\xbb\xbf"

func (s *sseParser) write(p []byte) bool {
	if !s.started {
		for len(p) > 0 && s.bomSeen < len(bom) && p[0] == bom[s.bomSeen] {
			s.bomSeen++
			p = p[1:]
		}
		switch {
		case s.bomSeen == len(bom):
			s.started = true
		case len(p) == 0:
			return true // still maybe a BOM
		default:
			s.started = true
			s.feed([]byte(bom[:s.bomSeen])) // not a BOM after all
		}
	}
	s.feed(p)
	return true
}

func (s *sseParser) feed(p []byte) {
	if len(p) == 0 {
		return
	}
	off := 0
	if s.afterCR {
		s.afterCR = false
		if p[0] == '\n' {
			off = 1
		}
	}
	// Positions of the next LF and CR at or after off, found with the
	// vectorized IndexByte and reused until passed, so a chunk is scanned
	// once for each.
	lf, cr := -1, -1
	for off < len(p) {
		if lf < off {
			lf = indexFrom(p, off, '\n')
		}
		if cr < off {
			cr = indexFrom(p, off, '\r')
		}
		end := min(lf, cr)
		if end == len(p) {
			s.appendPartial(p[off:])
			return
		}
		s.endLine(p[off:end])
		off = end + 1
		if p[end] == '\r' {
			if off == len(p) {
				s.afterCR = true
			} else if p[off] == '\n' {
				off++
			}
		}
	}
}

// indexFrom returns the index of c in p at or after off, or len(p).
func indexFrom(p []byte, off int, c byte) int {
	if i := bytes.IndexByte(p[off:], c); i >= 0 {
		return off + i
	}
	return len(p)
}

// appendPartial keeps b, a non-empty line start without its end, for the
// next write.
func (s *sseParser) appendPartial(b []byte) {
	if s.skip {
		s.partial = true
		return
	}
	if s.size+int64(len(s.line)+len(b)) > s.max {
		s.startSkip()
		s.partial = true
		return
	}
	s.line = append(s.line, b...)
}

// endLine handles a complete line, b being its last part (without the line
// terminator).
func (s *sseParser) endLine(b []byte) {
	switch {
	case s.skip:
		blank := !s.partial && len(b) == 0
		s.partial = false
		if blank {
			s.skip = false
			s.size = 0
		}
	case len(s.line) > 0:
		if s.size+int64(len(s.line)+len(b)) > s.max {
			s.startSkip()
			return
		}
		s.line = append(s.line, b...)
		s.field(s.line)
		s.line = s.line[:0]
	case len(b) == 0:
		s.dispatch()
	case s.size+int64(len(b)) > s.max:
		s.startSkip()
	default:
		s.field(b)
	}
}

func (s *sseParser) startSkip() {
	s.skip = true
	s.line = s.line[:0]
	s.data = s.data[:0]
	s.size = 0
}

// field handles a non-blank line.
func (s *sseParser) field(line []byte) {
	s.size += int64(len(line))
	name, value := line, []byte(nil)
	if i := bytes.IndexByte(line, ':'); i >= 0 {
		name, value = line[:i], line[i+1:]
		if len(value) > 0 && value[0] == ' ' {
			value = value[1:]
		}
	}
	if string(name) == "data" { // also false for comments: their name is empty
		s.data = append(s.data, value...)
		s.data = append(s.data, '\n')
	}
}

// dispatch ends the current event at a blank line.
func (s *sseParser) dispatch() {
	if n := len(s.data); n > 0 {
		if d := s.data[:n-1]; hasUsageObject(d) {
			s.t.decode(d)
		}
	}
	s.data = s.data[:0]
	s.size = 0
}

func (s *sseParser) usage() Usage { return s.t.usage() }
