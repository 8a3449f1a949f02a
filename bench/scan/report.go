package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
)

// row is one run of one tool setting on one workload at one rate.
type row struct {
	Tool        string  `json:"tool"`
	Setting     string  `json:"setting"`
	Workload    string  `json:"workload"`
	Rate        int     `json:"target_pps"`   // 0: unlimited
	Probes      uint64  `json:"probes_sent"`  // SYNs that reached the targets' namespace
	Packets     uint64  `json:"packets_sent"` // every frame on the scanner's veth (probes, a tool's own RSTs)
	TxDropped   uint64  `json:"tx_dropped"`
	SendSeconds float64 `json:"send_seconds"`
	PPS         float64 `json:"achieved_pps"`
	WallSeconds float64 `json:"wall_seconds"`
	CPUSeconds  float64 `json:"cpu_seconds"` // user + sys of the scanner process (wait4 rusage)
	score
	// Ratios trawl/this row on the same workload and rate (only on peer
	// rows): below 1 means trawl took less.
	WallRatio        float64 `json:"wall_ratio_trawl_over_peer,omitempty"`
	CPUPerProbeRatio float64 `json:"cpu_per_probe_ratio_trawl_over_peer,omitempty"`
	Error            string  `json:"error,omitempty"`
}

func (r *row) key() string { return r.Workload + "@" + strconv.Itoa(r.Rate) }

// cpuPerMProbe is CPU seconds per million probes (0 when nothing was sent).
func (r *row) cpuPerMProbe() float64 {
	if r.Probes == 0 {
		return 0
	}
	return r.CPUSeconds / float64(r.Probes) * 1e6
}

// ratio is a/b, or 0 when either side is unusable.
func ratio(a, b float64) float64 {
	if a <= 0 || b <= 0 {
		return 0
	}
	return a / b
}

// fillRatios sets each peer row's ratios against trawl's row on the same
// workload and rate; rows without a usable trawl counterpart get none.
func fillRatios(rows []row) {
	trawl := map[string]*row{}
	for i := range rows {
		if rows[i].Tool == toolTrawl && rows[i].Error == "" {
			trawl[rows[i].key()] = &rows[i]
		}
	}
	for i := range rows {
		r := &rows[i]
		t := trawl[r.key()]
		if r.Tool == toolTrawl || t == nil || r.Error != "" {
			continue
		}
		r.WallRatio = ratio(t.WallSeconds, r.WallSeconds)
		r.CPUPerProbeRatio = ratio(t.cpuPerMProbe(), r.cpuPerMProbe())
	}
}

func rateName(pps int) string {
	switch {
	case pps == 0:
		return "max"
	case pps%1_000_000 == 0:
		return strconv.Itoa(pps/1_000_000) + "M"
	case pps%1000 == 0:
		return strconv.Itoa(pps/1000) + "k"
	}
	return strconv.Itoa(pps)
}

// parseRates reads "10k,50k,1M,max" (max or unlimited: no limit).
func parseRates(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if f == "max" || f == "unlimited" {
			out = append(out, 0)
			continue
		}
		mult := 1
		switch {
		case strings.HasSuffix(f, "k"):
			mult, f = 1000, strings.TrimSuffix(f, "k")
		case strings.HasSuffix(f, "M"):
			mult, f = 1_000_000, strings.TrimSuffix(f, "M")
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("rate %q: want a positive number with an optional k/M suffix, or max", f)
		}
		out = append(out, n*mult)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no rates in %q", s)
	}
	return out, nil
}

func ratioCell(v float64) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", v)
}

// writeTable prints the rows, one per tool, setting, workload and rate.
func writeTable(w io.Writer, rows []row) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "workload\trate\ttool\tsetting\tprobes\tachieved pps\twall s\tCPU s\tCPU s/Mprobe\topen found\tground truth\trecall %\tdups\tfalse pos\twall trawl/peer\tCPU/probe trawl/peer\t")
	for i := range rows {
		r := &rows[i]
		if r.Error != "" {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\terror (below)\t\t\t\t\t\t\t\t\t\t\t\t\n", r.Workload, rateName(r.Rate), r.Tool, r.Setting)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%.0f\t%.2f\t%.2f\t%.2f\t%d\t%d\t%.3f\t%d\t%d\t%s\t%s\t\n",
			r.Workload, rateName(r.Rate), r.Tool, r.Setting, r.Probes, r.PPS, r.WallSeconds, r.CPUSeconds,
			r.cpuPerMProbe(), r.Found, r.Truth, r.Recall*100, r.Duplicates, r.FalsePositives,
			ratioCell(r.WallRatio), ratioCell(r.CPUPerProbeRatio))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for i := range rows {
		if r := &rows[i]; r.Error != "" {
			fmt.Fprintf(w, "error: %s %s %s %s: %s\n", r.Workload, rateName(r.Rate), r.Tool, r.Setting, r.Error)
		}
	}
	return nil
}

// report is the JSON document --json writes.
type report struct {
	Header []string `json:"header"`
	Rows   []row    `json:"rows"`
}

func writeJSON(w io.Writer, header []string, rows []row) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(report{Header: header, Rows: rows})
}
