package clickhouse

import (
	"encoding/json"
	"errors"
	"strconv"
	"testing"

	"trawl/ingest"
)

func TestAnalytics(t *testing.T) {
	s := openStore(t, testConfig(t))
	ctx := t.Context()
	client := ingest.NewID("usr_")
	job1, job2 := ingest.NewID("job_"), ingest.NewID("job_")
	port := func(job, ip string, p int) ingest.Event {
		e := testEvent(ip, p)
		e.Origin.ClientID, e.Origin.JobID = client, job
		e.RecordID = ingest.RecordID(job, ip, strconv.Itoa(p), ingest.ModulePortscan)
		return e
	}
	grab := func(job, ip string, p int, data string) ingest.Event {
		e := port(job, ip, p)
		e.RecordID = ingest.RecordID(job, ip, strconv.Itoa(p), "ssh")
		e.Origin.Type, e.Origin.Module = "ssh", ingest.ModuleGrabber
		e.Result.Data = json.RawMessage(data)
		return e
	}
	openssh := `{"product":"OpenSSH","version":"9.6","status":"success"}`
	a22 := port(job1, "198.18.7.1", 22)
	batch := []ingest.Event{
		a22, a22, // a redelivery counts once
		port(job1, "198.18.7.2", 22),
		port(job1, "198.18.7.1", 80),
		port(job2, "198.18.7.3", 443),
		grab(job1, "198.18.7.1", 22, openssh),
		grab(job1, "198.18.7.2", 22, openssh),
		grab(job2, "198.18.7.1", 2222, `{"product":"Dropbear sshd","version":"2022.83"}`),
		grab(job2, "198.18.7.3", 443, `{"status":"error"}`), // no product
	}
	other := port(ingest.NewID("job_"), "198.18.7.1", 25)
	other.Origin.ClientID = ingest.NewID("usr_") // another user's finding
	if err := s.InsertEvents(ctx, append(batch, other)); err != nil {
		t.Fatal(err)
	}

	ports, err := s.TopPorts(ctx, client, job1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(ports) != 2 || ports[0] != (PortCount{22, 2}) || ports[1] != (PortCount{80, 1}) {
		t.Fatalf("TopPorts(job1) = %+v, want 22:2, 80:1", ports)
	}
	ports, err = s.TopPorts(ctx, client, "", 1)
	if err != nil || len(ports) != 1 || ports[0] != (PortCount{22, 2}) {
		t.Fatalf("TopPorts(client, limit 1) = %+v, %v; want 22:2", ports, err)
	}

	products, err := s.TopProducts(ctx, client, "", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := []ProductCount{{"OpenSSH", "9.6", 2}, {"Dropbear sshd", "2022.83", 1}}
	if len(products) != len(want) || products[0] != want[0] || products[1] != want[1] {
		t.Fatalf("TopProducts = %+v, want %+v", products, want)
	}
	products, err = s.TopProducts(ctx, client, job2, 2222, 0)
	if err != nil || len(products) != 1 || products[0] != want[1] {
		t.Fatalf("TopProducts(job2, port 2222) = %+v, %v; want %+v", products, err, want[1])
	}

	history, err := s.IPHistory(ctx, client, "198.18.7.1", 0)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, sg := range history {
		seen[sg.ID]++
		if sg.Port == 25 {
			t.Fatalf("IPHistory shows another user's finding: %+v", sg)
		}
	}
	// 22 and 80 open in job1, ssh on 22 (job1) and 2222 (job2); a22 once
	if len(history) != 4 || seen[a22.ID] != 1 {
		t.Fatalf("IPHistory = %+v, want 4 sightings with %s once", history, a22.ID)
	}
	for i := 1; i < len(history); i++ {
		if history[i].TS > history[i-1].TS {
			t.Fatalf("IPHistory not newest first: %+v", history)
		}
	}

	for name, call := range map[string]func() error{
		"TopPorts":    func() error { _, err := s.TopPorts(ctx, "", "", 0); return err },
		"TopProducts": func() error { _, err := s.TopProducts(ctx, "", "", 0, 0); return err },
		"IPHistory":   func() error { _, err := s.IPHistory(ctx, "", "198.18.7.1", 0); return err },
	} {
		if err := call(); !errors.Is(err, ErrMissingClient) {
			t.Errorf("%s without a client = %v, want ErrMissingClient", name, err)
		}
	}
}
