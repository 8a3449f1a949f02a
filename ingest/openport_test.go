package ingest

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
)

func sampleOpenPort() OpenPort {
	return OpenPort{JobID: "job_01m7zz84d0ce42kk83t1h3h002", ClientID: "usr_01m7zz84d0ce42kk83t1h3h003",
		IP: "198.18.10.200", Port: 443, Protocol: "tcp", TTL: 63, Window: 64240,
		Modules: []string{"ssl", "service"}, Found: 1795296210913, SourceIP: "198.19.255.1", SourcePort: 40123}
}

func TestOpenPortBinaryRoundTrip(t *testing.T) {
	named := sampleOpenPort()
	named.Hostname = "www.example.test"
	for _, op := range []OpenPort{sampleOpenPort(), named, {JobID: "j", IP: "::1", Port: 65535, Found: -1}, {}} {
		b, err := Encode(nil, &op)
		if err != nil {
			t.Fatal(err)
		}
		// the previous release's form unless there is a hostname to carry
		if want := byte(openPortBinaryV1); b[0] != want && !(op.Hostname != "" && b[0] == openPortBinaryV2) {
			t.Fatalf("open port %+v encoded with tag %x", op, b[0])
		}
		var got OpenPort
		if err := Decode(b, &got); err != nil {
			t.Fatalf("decode %+v: %v", op, err)
		}
		op.V = SchemaVersion
		if len(op.Modules) == 0 {
			op.Modules = got.Modules // nil vs empty
		}
		if !reflect.DeepEqual(got, op) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", got, op)
		}
	}
}

func TestOpenPortDecodesJSONToo(t *testing.T) {
	op := sampleOpenPort()
	op.V = SchemaVersion
	b, _ := json.Marshal(op)
	var got OpenPort
	if err := Decode(b, &got); err != nil || !reflect.DeepEqual(got, op) {
		t.Fatalf("JSON open port: %+v %v", got, err)
	}
}

func TestOpenPortBinaryRejectsDamage(t *testing.T) {
	op := sampleOpenPort()
	op.Hostname = "www.example.test"
	b, _ := Encode(nil, &op)
	for n := 1; n < len(b); n++ {
		var got OpenPort
		if err := Decode(b[:n], &got); err == nil {
			t.Fatalf("a record truncated to %d of %d bytes decoded", n, len(b))
		}
	}
	var got OpenPort
	if err := Decode(append(append([]byte(nil), b...), 0), &got); err == nil {
		t.Fatal("trailing bytes accepted")
	}
	if err := Decode([]byte{0xB3, 1, 2}, &got); !errors.Is(err, ErrVersion) {
		t.Fatalf("a newer binary form: %v, want ErrVersion", err)
	}
	huge := []byte{openPortBinaryV1, 0, 0, 0, 0xFF, 0xFF, 0x07} // port 131071
	if err := Decode(append(huge, make([]byte, 8)...), &got); err == nil {
		t.Fatal("an out-of-range port decoded")
	}
}

func BenchmarkOpenPortEncode(b *testing.B) {
	op := sampleOpenPort()
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		buf, _ = Encode(buf[:0], &op)
	}
	b.ReportMetric(float64(len(buf)), "bytes/record")
}

func BenchmarkOpenPortDecode(b *testing.B) {
	op := sampleOpenPort()
	buf, _ := Encode(nil, &op)
	var got OpenPort
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if err := Decode(buf, &got); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkOpenPortJSON(b *testing.B) {
	op := sampleOpenPort()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		raw, _ := json.Marshal(&op)
		var got OpenPort
		if err := json.Unmarshal(raw, &got); err != nil {
			b.Fatal(err)
		}
	}
}
