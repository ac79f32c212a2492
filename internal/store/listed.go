package store

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
)

// decodeListed decodes the listed fields of a volume record. Records are
// what json.Marshal wrote: one flat object whose strings rarely need
// unescaping. The fast path reads such a record in one pass, without
// reflection; anything it does not expect (an escape in a value it keeps,
// a number it cannot parse, malformed input) sends the record through
// encoding/json instead, so the result is always encoding/json's. A
// listing decodes every record of a page, and encoding/json's validation
// pass plus reflection were most of the cost of listing 10,000 volumes.
func decodeListed(raw []byte, f *listedFields) error {
	if fastListed(raw, f) {
		return nil
	}
	*f = listedFields{}
	return json.Unmarshal(raw, f)
}

// fastListed is decodeListed's fast path; false means "use encoding/json".
func fastListed(b []byte, f *listedFields) bool {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return false
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return skipSpace(b, i+1) == len(b)
	}
	for {
		key, j, ok := plainString(b, i)
		if !ok {
			return false
		}
		j = skipSpace(b, j)
		if j >= len(b) || b[j] != ':' {
			return false
		}
		j = skipSpace(b, j+1)
		var dst *string
		switch key {
		case "id":
			dst = &f.ID
		case "pool":
			dst = &f.Pool
		case "fsType":
			dst = &f.FsType
		case "mkfsOptions":
			dst = &f.MkfsOptions
		case "sourceSnapshotId":
			dst = &f.SourceSnapshotID
		case "sourceVolumeId":
			dst = &f.SourceVolumeID
		case "encryption":
			dst = &f.Encryption
		case "keyId":
			dst = &f.KeyID
		case "capacityBytes":
			k := j
			if k < len(b) && b[k] == '-' {
				k++
			}
			for k < len(b) && b[k] >= '0' && b[k] <= '9' {
				k++
			}
			digits := b[j:k]
			if len(digits) > 0 && digits[0] == '-' {
				digits = digits[1:]
			}
			if len(digits) > 1 && digits[0] == '0' { // not JSON
				return false
			}
			n, err := strconv.ParseInt(string(b[j:k]), 10, 64)
			if err != nil {
				return false
			}
			f.CapacityBytes, j = n, k
		default:
			// encoding/json matches keys without regard to case.
			if isListedKey(key) {
				return false
			}
			// Not listed (name, parameters, createdAt, ...): only skipped,
			// and only values json.Marshal writes.
			var ok bool
			if j, ok = skipValue(b, j); !ok {
				return false
			}
		}
		if dst != nil {
			s, k, ok := plainString(b, j)
			if !ok {
				return false
			}
			*dst, j = s, k
		}
		j = skipSpace(b, j)
		if j >= len(b) {
			return false
		}
		switch b[j] {
		case ',':
			i = skipSpace(b, j+1)
		case '}':
			return skipSpace(b, j+1) == len(b)
		default:
			return false
		}
	}
}

var listedKeys = []string{"id", "pool", "capacityBytes", "fsType", "mkfsOptions", "sourceSnapshotId", "sourceVolumeId", "encryption", "keyId"}

func isListedKey(key string) bool {
	for _, k := range listedKeys {
		if strings.EqualFold(k, key) {
			return true
		}
	}
	return false
}

// skipNumber skips a number as JSON's grammar has it.
func skipNumber(b []byte, i int) (int, bool) {
	digits := func(k int) int {
		for k < len(b) && b[k] >= '0' && b[k] <= '9' {
			k++
		}
		return k
	}
	k := i
	if k < len(b) && b[k] == '-' {
		k++
	}
	switch {
	case k < len(b) && b[k] == '0':
		k++
	case k < len(b) && b[k] >= '1' && b[k] <= '9':
		k = digits(k)
	default:
		return i, false
	}
	if k < len(b) && b[k] == '.' {
		if e := digits(k + 1); e > k+1 {
			k = e
		} else {
			return i, false
		}
	}
	if k < len(b) && (b[k] == 'e' || b[k] == 'E') {
		k++
		if k < len(b) && (b[k] == '+' || b[k] == '-') {
			k++
		}
		if e := digits(k); e > k {
			k = e
		} else {
			return i, false
		}
	}
	return k, true
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// plainString reads a JSON string at b[i] that has no escapes and only
// printable ASCII (so it is the same bytes decoded), and returns it and
// the index after it.
func plainString(b []byte, i int) (string, int, bool) {
	if i >= len(b) || b[i] != '"' {
		return "", i, false
	}
	for k := i + 1; k < len(b); k++ {
		switch c := b[k]; {
		case c == '"':
			return string(b[i+1 : k]), k + 1, true
		case c == '\\' || c < 0x20 || c >= 0x7f:
			return "", i, false
		}
	}
	return "", i, false
}

// skipValue skips a string (escapes allowed), a number, true, false,
// null, or an object of string values (parameters).
func skipValue(b []byte, i int) (int, bool) {
	if i >= len(b) {
		return i, false
	}
	switch c := b[i]; {
	case c == '"':
		return skipString(b, i)
	case c == '{':
		i = skipSpace(b, i+1)
		if i < len(b) && b[i] == '}' {
			return i + 1, true
		}
		for {
			var ok bool
			if i, ok = skipString(b, i); !ok {
				return i, false
			}
			if i = skipSpace(b, i); i >= len(b) || b[i] != ':' {
				return i, false
			}
			if i, ok = skipString(b, skipSpace(b, i+1)); !ok {
				return i, false
			}
			if i = skipSpace(b, i); i >= len(b) {
				return i, false
			}
			if b[i] == '}' {
				return i + 1, true
			}
			if b[i] != ',' {
				return i, false
			}
			i = skipSpace(b, i+1)
		}
	case c == '-' || (c >= '0' && c <= '9'):
		return skipNumber(b, i)
	}
	for _, lit := range []string{"true", "false", "null"} {
		if bytes.HasPrefix(b[i:], []byte(lit)) {
			return i + len(lit), true
		}
	}
	return i, false
}

// skipString skips a JSON string whose escapes are well-formed and whose
// bytes are valid UTF-8 with no control characters; anything else is
// left to encoding/json.
func skipString(b []byte, i int) (int, bool) {
	if i >= len(b) || b[i] != '"' {
		return i, false
	}
	for k := i + 1; k < len(b); k++ {
		switch c := b[k]; {
		case c == '"':
			return k + 1, true
		case c < 0x20 || c >= 0x80:
			// Control characters are invalid JSON; non-ASCII would need a
			// UTF-8 check: both go the slow way.
			return i, false
		case c == '\\':
			if k+1 >= len(b) {
				return i, false
			}
			switch b[k+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				k++
			case 'u':
				if k+5 >= len(b) {
					return i, false
				}
				for _, h := range b[k+2 : k+6] {
					if !(h >= '0' && h <= '9' || h >= 'a' && h <= 'f' || h >= 'A' && h <= 'F') {
						return i, false
					}
				}
				k += 5
			default:
				return i, false
			}
		}
	}
	return i, false
}
