package chtest

import (
	"context"
	"os"
	"testing"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
)

func TestMain(m *testing.M) {
	os.Exit(Main(m))
}

func ping(addr string) error {
	conn, err := ch.Open(&ch.Options{Addr: []string{addr}, DialTimeout: time.Second})
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return conn.Ping(ctx)
}

// TestStartStopsAndCleansUp: a server of a test answers during it, and is
// gone with its directory after it.
func TestStartStopsAndCleansUp(t *testing.T) {
	var srv *Server
	t.Run("server", func(t *testing.T) {
		srv = StartServer(t)
		if err := ping(srv.Addr); err != nil {
			t.Fatalf("ping during the test: %v", err)
		}
		if srv.Addr == Shared(t) {
			t.Fatal("a private server shares the shared server's address")
		}
	})
	if srv == nil {
		t.Skip("no server started")
	}
	if err := ping(srv.Addr); err == nil {
		t.Fatal("server still answers after its test ended")
	}
	if _, err := os.Stat(srv.Dir); !os.IsNotExist(err) {
		t.Fatalf("server directory %s after its test: %v, want removed", srv.Dir, err)
	}
	srv.Stop() // twice is harmless
}

func TestNewDatabaseIsDropped(t *testing.T) {
	addr := Shared(t)
	var name string
	t.Run("use", func(t *testing.T) {
		name = NewDatabase(t, addr)
		if other := NewDatabase(t, addr); other == name {
			t.Fatalf("NewDatabase returned %s twice", name)
		}
		conn, err := ch.Open(&ch.Options{Addr: []string{addr}})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if err := conn.Exec(t.Context(), "CREATE DATABASE "+name); err != nil {
			t.Fatal(err)
		}
	})
	conn, err := ch.Open(&ch.Options{Addr: []string{addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var n uint64
	if err := conn.QueryRow(t.Context(), "SELECT count() FROM system.databases WHERE name = ?", name).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("database %s still exists after its test", name)
	}
}
