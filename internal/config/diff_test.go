package config

import (
	"reflect"
	"testing"
)

func TestFieldKeysCoverSettings(t *testing.T) {
	st := reflect.TypeOf(Settings{})
	mapped := map[string]bool{}
	for i := 0; i < st.NumField(); i++ {
		f := st.Field(i)
		if !f.IsExported() {
			continue
		}
		k, ok := fieldKeys[f.Name]
		if !ok {
			t.Errorf("Settings.%s has no key in fieldKeys", f.Name)
			continue
		}
		if _, ok := lookupKey(k); !ok {
			t.Errorf("fieldKeys[%s] = %q is not a key", f.Name, k)
		}
		mapped[k] = true
	}
	for _, k := range keys {
		if k.Name != "config" && !mapped[k.Name] {
			t.Errorf("key %q sets no Settings field listed in fieldKeys", k.Name)
		}
	}
}

func TestChangedKeys(t *testing.T) {
	load := func(file string) *Settings {
		t.Helper()
		s, _, err := Load(Sources{FileName: "x.conf", FileData: []byte(file)})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	tests := []struct {
		a, b string
		want []string
	}{
		{"", "", nil},
		{"user = a:1", "user = a:2", []string{"user"}},
		{"user = a:1\nrealm = x", "user = a:1\nrealm = y\nmin-port = 50000", []string{"min-port", "realm"}},
		{"", "listen = 127.0.0.1:1\nauth-secret = s", []string{"listen", "auth-secret"}},
	}
	for _, tt := range tests {
		got := ChangedKeys(load(tt.a), load(tt.b))
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ChangedKeys(%q, %q) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}
