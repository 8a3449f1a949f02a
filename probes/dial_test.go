package probes

import (
	"context"
	"net"
	"testing"
	"time"
)

func TestDialArmsDeadlineAndCancel(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // a silent server: accepts and never writes
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	var d net.Dialer

	// the connection's deadline is the connect timeout
	conn, done, err := Dial(context.Background(), &d, ln.Addr().String(), 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = conn.Read(make([]byte, 1))
	done()
	if err == nil || Classify(err) != StatusTimeout || time.Since(start) > 2*time.Second {
		t.Fatalf("read on a silent server: %v after %s, want a timeout near 200ms", err, time.Since(start))
	}

	// canceling ctx unblocks a read at once
	ctx, cancel := context.WithCancel(context.Background())
	conn, done, err = Dial(ctx, &d, ln.Addr().String(), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	time.AfterFunc(50*time.Millisecond, cancel)
	start = time.Now()
	if _, err := conn.Read(make([]byte, 1)); err == nil || time.Since(start) > 2*time.Second {
		t.Fatalf("read after cancel: %v after %s", err, time.Since(start))
	}

	// a refused connect is not a timeout
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := closed.Addr().String()
	closed.Close()
	if _, _, err := Dial(context.Background(), &d, addr, time.Second); Classify(err) != StatusRefused {
		t.Fatalf("closed port: %v (%s), want refused", err, Classify(err))
	}
}
