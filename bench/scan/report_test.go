package main

import (
	"bytes"
	"encoding/json"
	"math"
	"slices"
	"strings"
	"testing"
)

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestParseRates(t *testing.T) {
	got, err := parseRates("10k, 50k,1M,max,unlimited,1234")
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{10000, 50000, 1000000, 0, 0, 1234}; !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for _, bad := range []string{"", "fast", "0", "-5k", "1G", "k"} {
		if _, err := parseRates(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	for pps, want := range map[int]string{0: "max", 10000: "10k", 1000000: "1M", 1500: "1500", 300000: "300k"} {
		if got := rateName(pps); got != want {
			t.Errorf("rateName(%d) = %q, want %q", pps, got, want)
		}
	}
}

func TestFillRatios(t *testing.T) {
	rows := []row{
		{Tool: toolTrawl, Workload: "w", Rate: 0, WallSeconds: 2, CPUSeconds: 1, Probes: 1_000_000},
		{Tool: toolMasscan, Workload: "w", Rate: 0, WallSeconds: 4, CPUSeconds: 4, Probes: 2_000_000},
		{Tool: toolZmap, Workload: "w", Rate: 0, WallSeconds: 1, CPUSeconds: 1, Probes: 1_000_000},
		// another rate: its trawl row failed, so no ratio
		{Tool: toolTrawl, Workload: "w", Rate: 1000, Error: "boom"},
		{Tool: toolZmap, Workload: "w", Rate: 1000, WallSeconds: 1, CPUSeconds: 1, Probes: 10},
		// a failed peer row gets none either
		{Tool: toolNmap, Workload: "w", Rate: 0, Error: "timed out"},
		// nothing sent: no CPU-per-probe ratio
		{Tool: toolNmap, Workload: "w", Rate: 0, WallSeconds: 8},
	}
	fillRatios(rows)
	check := func(i int, wall, cpu float64) {
		t.Helper()
		if !near(rows[i].WallRatio, wall) || !near(rows[i].CPUPerProbeRatio, cpu) {
			t.Errorf("row %d: ratios %v, %v; want %v, %v", i, rows[i].WallRatio, rows[i].CPUPerProbeRatio, wall, cpu)
		}
	}
	check(0, 0, 0)     // trawl itself
	check(1, 0.5, 0.5) // trawl 1 µs/probe vs masscan 2 µs/probe
	check(2, 2, 1)
	check(3, 0, 0)
	check(4, 0, 0)
	check(5, 0, 0)
	check(6, 0.25, 0)
	if got := rows[1].cpuPerMProbe(); !near(got, 2) {
		t.Errorf("cpu per M probes %v, want 2", got)
	}
	if got := (&row{CPUSeconds: 3}).cpuPerMProbe(); got != 0 {
		t.Errorf("cpu per M probes with nothing sent %v, want 0", got)
	}
}

func TestWriteTableAndJSON(t *testing.T) {
	rows := []row{
		{Tool: toolTrawl, Setting: "raw", Workload: "/16x5 sparse", Rate: 0, Probes: 327680, PPS: 512345, WallSeconds: 1.7, CPUSeconds: 0.9,
			score: score{Found: 3275, Truth: 3275, Recall: 1}},
		{Tool: toolZmap, Setting: "-T 2", Workload: "/16x5 sparse", Rate: 0, Probes: 327680, PPS: 400000, WallSeconds: 6, CPUSeconds: 1.8,
			score: score{Found: 3270, Truth: 3275, Recall: 3270.0 / 3275, Duplicates: 2, FalsePositives: 1}},
		{Tool: toolNmap, Setting: "-sS", Workload: "/16x5 sparse", Rate: 0, Error: "nmap timed out after 10m0s"},
	}
	fillRatios(rows)
	var out bytes.Buffer
	if err := writeTable(&out, rows); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 5 {
		t.Fatalf("table has %d lines, want a header, 3 rows and an error line:\n%s", len(lines), out.String())
	}
	for _, want := range []string{"achieved pps", "recall %", "wall trawl/peer", "CPU/probe trawl/peer"} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("header lacks %q: %s", want, lines[0])
		}
	}
	if f := strings.Fields(lines[1]); !slices.Contains(f, "512345") || !slices.Contains(f, "100.000") || f[len(f)-1] != "-" {
		t.Errorf("trawl row: %s", lines[1])
	}
	// ratios: wall 1.7/6, CPU per probe 0.9/1.8
	if f := strings.Fields(lines[2]); f[len(f)-2] != "0.28" || f[len(f)-1] != "0.50" || !slices.Contains(f, "99.847") {
		t.Errorf("zmap row: %s", lines[2])
	}
	if !strings.Contains(lines[3], "error (below)") || strings.Contains(lines[3], "timed out") {
		t.Errorf("error row: %s", lines[3])
	}
	if lines[4] != "error: /16x5 sparse max nmap -sS: nmap timed out after 10m0s" {
		t.Errorf("error line: %s", lines[4])
	}

	var js bytes.Buffer
	if err := writeJSON(&js, []string{"h1"}, rows); err != nil {
		t.Fatal(err)
	}
	var back report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Rows) != 3 || back.Header[0] != "h1" || back.Rows[1].Found != 3270 || !near(back.Rows[1].CPUPerProbeRatio, 0.5) {
		t.Fatalf("JSON round trip: %+v", back)
	}
	if !strings.Contains(js.String(), `"achieved_pps"`) || !strings.Contains(js.String(), `"recall"`) {
		t.Fatalf("JSON lacks field names:\n%s", js.String())
	}
}
