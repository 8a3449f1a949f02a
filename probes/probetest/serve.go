package probetest

import (
	"net"
	"sync"
	"testing"
)

// Serve accepts on 127.0.0.1:0 and runs handle per connection (closing it
// after) until the test ends, when it stops accepting and waits for the
// handlers; it returns the port. It is for fake servers in module unit
// tests, which need no namespace.
func Serve(t testing.TB, handle func(c net.Conn)) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().(*net.TCPAddr).Port
}
