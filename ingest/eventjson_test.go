package ingest

import (
	"bytes"
	"encoding/json"
	"testing"
)

func TestAppendEventMatchesEncodingJSON(t *testing.T) {
	odd := "a\"b\\c\n\t\r\b\f\x01<>&\u2028\u2029é\xff日本"
	events := []Event{
		{},
		{V: 1, RecordID: "rec_1", Origin: Origin{JobID: "job_1", ClientID: "usr_1", Type: "port", Module: "portscan", TS: 1795296210913, IP: "198.19.255.1", Port: 40123},
			Target: Target{IP: "198.18.0.7", Port: 22, Protocol: "tcp"}, Result: Result{Data: json.RawMessage(`{"response":"synack"}`)}},
		{V: 1, ID: "ev_x", Origin: Origin{JobID: odd, ClientID: odd, Type: odd, Module: odd, TS: -5, IP: odd, Port: -1},
			Target: Target{IP: odd, Protocol: odd}, Result: Result{Data: json.RawMessage(" {\"a\" : [1, 2, \"<b>\"], \"é\":null}\n")}},
		{Target: Target{Port: 80}, Result: Result{Data: json.RawMessage(`"just a string"`)}},
		{Target: Target{Protocol: "udp"}, Result: Result{Data: json.RawMessage(`{"nested":{"x":"\u00e9 \\"}}`)}},
	}
	for i, e := range events {
		want, err := json.Marshal(&e)
		if err != nil {
			t.Fatal(err)
		}
		got, err := appendEvent(nil, &e)
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("event %d:\n got %s\nwant %s", i, got, want)
		}
	}
	bad := Event{Result: Result{Data: json.RawMessage(`{"unterminated`)}}
	if _, err := appendEvent(nil, &bad); err == nil {
		t.Fatal("invalid result.data encoded")
	}
}

func FuzzAppendEvent(f *testing.F) {
	f.Add("job_1", "port", "198.18.0.1", 22, `{"response":"synack"}`)
	f.Add("j\"<", "x\u2028", "\xff", -1, ` [1, "a" ] `)
	f.Fuzz(func(t *testing.T, job, typ, ip string, port int, data string) {
		e := Event{V: 1, Origin: Origin{JobID: job, Type: typ, IP: ip, Port: port}, Target: Target{IP: ip, Port: port}, Result: Result{Data: json.RawMessage(data)}}
		want, werr := json.Marshal(&e)
		got, gerr := appendEvent(nil, &e)
		if (werr != nil) != (gerr != nil) {
			t.Fatalf("errors differ: %v vs %v", gerr, werr)
		}
		if werr == nil && !bytes.Equal(got, want) {
			t.Fatalf("\n got %s\nwant %s", got, want)
		}
	})
}
