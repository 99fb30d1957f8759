package bench

import (
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
)

// WriteTable writes the results as a table: for each scenario a row per
// system with each figure's median and its spread over the rounds, and a
// row of ratios natlog/JetStream.
func WriteTable(w io.Writer, res *Results) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(w, "natlog vs JetStream (nats-server %s), %d round(s) of %gs (after %gs warm-up), %d CPUs, %s\n",
		res.Host.NATSServer, res.Setup.Rounds, res.Setup.DurationS, res.Setup.WarmupS, res.Host.CPUs, res.Host.GoVersion)
	fmt.Fprintln(w, "Each figure: median over the rounds ± half its min-max range (% of the median). Ratio: natlog/JetStream of the medians;")
	fmt.Fprintln(w, "records/s and MB/s: higher is better (ratio > 1 favours natlog); latency, CPU, memory: lower is better (ratio < 1 favours natlog).")
	// The first two columns are padded here so that they read
	// left-aligned; tabwriter right-aligns every cell.
	nameW := len("scenario")
	for _, s := range res.Scenarios {
		nameW = max(nameW, len(s.Name))
	}
	const sysW = len("natlog (=matched)")
	left := func(name, sys string) string { return fmt.Sprintf("%-*s\t%-*s", nameW, name, sysW, sys) }
	fmt.Fprintln(tw, left("scenario", "system")+"\trecords/s\tMB/s\tp50 ms\tp90 ms\tp99 ms\tp99.9 ms\tsrv CPU s\tsrv RSS MiB\t")
	for _, s := range res.Scenarios {
		name := s.Name
		for _, sys := range []struct {
			name string
			r    *SystemResult
		}{{SystemNatlog, s.Natlog}, {SystemJetStream, s.JetStream}} {
			if sys.r == nil {
				continue
			}
			label := sys.name
			if sys.r.SameAs != "" {
				label += " (=matched)"
			}
			if len(sys.r.Rounds) == 0 {
				fmt.Fprintf(tw, "%s\tfailed\t\t\t\t\t\t\t\t %s\n", left(name, label), shorten(strings.Join(sys.r.Errors, "; "), 100))
				name = ""
				continue
			}
			m := sys.r.Summary
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", left(name, label),
				cell(m.RecordsPerSec, 0), cell(m.MBPerSec, 2), cell(m.P50, 3), cell(m.P90, 3), cell(m.P99, 3), cell(m.P999, 3),
				cell(m.ServerCPUSeconds, 2), cell(m.ServerPeakRSSMB, 0))
			name = ""
			if n := len(sys.r.Errors); n > 0 {
				fmt.Fprintf(tw, "%s\t\t\t\t\t\t\t\t\t %s\n", left("", fmt.Sprintf("%d round(s) failed", n)), shorten(sys.r.Errors[0], 100))
			}
		}
		if r := s.Ratio; r != nil {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", left("", "natlog/JS"),
				times(r.RecordsPerSec), times(r.MBPerSec), times(r.P50), times(r.P90), times(r.P99), times(r.P999),
				times(r.ServerCPUSeconds), times(r.ServerPeakRSSMB))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, n := range res.Notes {
		fmt.Fprintln(w, "- "+n)
	}
	return nil
}

// cell is "median ±spread%", the spread being half the min-max range.
func cell(s Stat, decimals int) string {
	if s == (Stat{}) {
		return "-    " // not measured (e.g. the servers of an existing deployment)
	}
	v := num(s.Median, decimals)
	if s.Median == 0 {
		return v
	}
	if s.Min == s.Max {
		return v + "    " // one round, or no spread: keep the columns aligned
	}
	half := s.Spread() / 2 * 100
	return fmt.Sprintf("%s ±%.0f%%", v, half)
}

// num formats v with decimals places and thousands separators.
func num(v float64, decimals int) string {
	s := fmt.Sprintf("%.*f", decimals, v)
	intPart, frac, _ := strings.Cut(s, ".")
	neg := strings.HasPrefix(intPart, "-")
	intPart = strings.TrimPrefix(intPart, "-")
	var b strings.Builder
	for i, c := range intPart {
		if i > 0 && (len(intPart)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	out := b.String()
	if frac != "" {
		out += "." + frac
	}
	if neg {
		out = "-" + out
	}
	return out
}

func times(r float64) string {
	switch {
	case r == 0 || math.IsInf(r, 0) || math.IsNaN(r):
		return "-"
	case r >= 100:
		return fmt.Sprintf("%.0fx    ", r)
	case r >= 10:
		return fmt.Sprintf("%.1fx    ", r)
	}
	return fmt.Sprintf("%.2fx    ", r)
}

func shorten(s string, n int) string {
	s = firstLine(s)
	if len(s) > n {
		return s[:n-3] + "..."
	}
	return s
}
