// Package nmapcmp compares the service module with nmap -sV on the real
// servers of the probetest harness and prints a side-by-side table: per
// port, nmap's product/version, trawl's, and the installed package's
// version. It runs as a gated test (the harness needs a testing.TB):
//
//	TRAWL_NMAPCMP=1 go test ./bench/nmapcmp -run TestCompare -v -count=1
package nmapcmp
