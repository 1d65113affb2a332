package config

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxFileSize bounds a configuration file; a larger file is certainly not a
// hand-written configuration.
const MaxFileSize = 1 << 20

// maxLineLength bounds one line (a PEM blob does not belong inline).
const maxLineLength = 8192

// Entry is one key = value setting and where it came from.
type Entry struct {
	Key   string
	Value string
	// Origin names the source for messages: "hybridrelay.conf:12",
	// "environment HYBRIDRELAY_MIN_PORT" or "flag --min-port".
	Origin string
	// File and Line are set for entries read from a file.
	File string
	Line int
}

// Error is a configuration error. It names the origin (file and line,
// environment variable or flag) and the key.
type Error struct {
	Origin string // "hybridrelay.conf:12", "environment HYBRIDRELAY_X", "flag --x"
	File   string // set for file errors
	Line   int    // set for file errors (1-based)
	Key    string // empty when the line could not be split into a key
	Err    error
}

func (e *Error) Error() string {
	switch {
	case e.Origin == "":
		return e.Err.Error()
	case e.File != "" && e.Key != "":
		return fmt.Sprintf("%s: key %q: %v", e.Origin, e.Key, e.Err)
	default:
		return fmt.Sprintf("%s: %v", e.Origin, e.Err)
	}
}

func (e *Error) Unwrap() error { return e.Err }

func fileOrigin(name string, line int) string { return fmt.Sprintf("%s:%d", name, line) }

// Parse splits a configuration file into entries. name is used in
// messages. It checks syntax only (and that keys exist); values are checked
// by Load. Parse never panics, and every error it returns is an *Error with
// a line number.
func Parse(name string, data []byte) ([]Entry, error) {
	if len(data) > MaxFileSize {
		return nil, &Error{Origin: fileOrigin(name, 1), File: name, Line: 1,
			Err: fmt.Errorf("file is larger than %d bytes", MaxFileSize)}
	}
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf")) // UTF-8 byte order mark
	var entries []Entry
	seen := map[string]int{} // non-repeatable key -> line
	lineNo := 0
	for len(data) > 0 {
		lineNo++
		var line []byte
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			line, data = data, nil
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		fail := func(key string, err error) error {
			return &Error{Origin: fileOrigin(name, lineNo), File: name, Line: lineNo, Key: key, Err: err}
		}
		if len(line) > maxLineLength {
			return nil, fail("", fmt.Errorf("line is longer than %d bytes", maxLineLength))
		}
		if !utf8.Valid(line) {
			return nil, fail("", errors.New("line is not valid UTF-8"))
		}
		text := strings.TrimSpace(string(line))
		if text == "" || text[0] == '#' {
			continue
		}
		eq := strings.IndexByte(text, '=')
		if eq < 0 {
			// Only the first word is echoed: the rest may be a secret.
			first := strings.Fields(text)[0]
			return nil, fail("", fmt.Errorf("expected \"key = value\", but there is no \"=\" after %q", clip(first)))
		}
		key := strings.TrimSpace(text[:eq])
		if key == "" {
			return nil, fail("", errors.New("missing key before \"=\""))
		}
		if !validKeySyntax(key) {
			return nil, fail("", fmt.Errorf("%q is not a key (keys are lower-case flag names such as min-port)", clip(key)))
		}
		k, ok := lookupKey(key)
		if !ok {
			return nil, fail(key, unknownKeyError(key))
		}
		if k.NoFile {
			return nil, fail(key, fmt.Errorf("cannot be set in a configuration file (use --%s or %s)", k.Name, EnvName(k.Name)))
		}
		value, err := parseValue(strings.TrimSpace(text[eq+1:]))
		if err != nil {
			return nil, fail(key, err)
		}
		if !k.Repeatable {
			if prev, dup := seen[key]; dup {
				return nil, fail(key, fmt.Errorf("already set on line %d (only %s may be repeated)", prev, strings.Join(repeatableKeys(), ", ")))
			}
			seen[key] = lineNo
		}
		entries = append(entries, Entry{Key: key, Value: value, Origin: fileOrigin(name, lineNo), File: name, Line: lineNo})
	}
	return entries, nil
}

func validKeySyntax(k string) bool {
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c >= 'A' && c <= 'Z' || c == '.') {
			return false
		}
	}
	return true
}

// parseValue handles the right-hand side of "=": a quoted string, or a bare
// value that ends at a " #" comment.
func parseValue(v string) (string, error) {
	if v == "" {
		return "", errors.New("has no value (write \"\" for an empty one)")
	}
	switch v[0] {
	case '"':
		end := closingQuote(v)
		if end < 0 {
			return "", errors.New("unterminated \"quoted\" value")
		}
		s, err := strconv.Unquote(v[:end+1])
		if err != nil {
			// The value is not echoed: it may be a secret.
			return "", errors.New(`bad escape in "quoted" value (Go escapes: \" \\ \t \n \xNN \uNNNN); use 'single quotes' for a literal value`)
		}
		if err := trailing(v[end+1:]); err != nil {
			return "", err
		}
		return s, nil
	case '\'':
		end := strings.IndexByte(v[1:], '\'')
		if end < 0 {
			return "", errors.New("unterminated 'quoted' value")
		}
		if err := trailing(v[end+2:]); err != nil {
			return "", err
		}
		return v[1 : end+1], nil
	}
	// Unquoted: a comment starts at a '#' that follows a blank.
	for i := 1; i < len(v); i++ {
		if v[i] == '#' && (v[i-1] == ' ' || v[i-1] == '\t') {
			v = strings.TrimSpace(v[:i])
			break
		}
	}
	return v, nil
}

// closingQuote returns the index of the '"' that closes the string starting
// at v[0], honouring backslash escapes, or -1.
func closingQuote(v string) int {
	for i := 1; i < len(v); i++ {
		switch v[i] {
		case '\\':
			i++
		case '"':
			return i
		}
	}
	return -1
}

// trailing accepts only blanks or a comment after a quoted value.
func trailing(rest string) error {
	rest = strings.TrimSpace(rest)
	if rest == "" || rest[0] == '#' {
		return nil
	}
	return errors.New("unexpected text after the quoted value (a comment starts with #)")
}

// clip shortens s for an error message.
func clip(s string) string {
	const max = 60
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}
