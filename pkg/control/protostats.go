package control

// protocolStats is ServerStats.Protocol: the counters of the DTLS
// listeners (dtls.go) and of RFC 5780 (natdiscovery.go).
func (s *Server) protocolStats() map[string]uint64 {
	d, n := &s.stats.dtls, &s.nat
	return map[string]uint64{
		"rfc5780_responses":      n.rfc5780.Load(),
		"rfc5780_change_ip":      n.changeIP.Load(),
		"rfc5780_change_port":    n.changePort.Load(),
		"rfc5780_response_port":  n.responsePort.Load(),
		"rfc5780_padding":        n.padding.Load(),
		"rfc5780_alt_dropped":    n.altDropped.Load(),
		"dtls_handshakes":        d.handshakes.Load(),
		"dtls_handshake_errors":  d.handshakeErrors.Load(),
		"dtls_refused_pending":   d.refusedPending.Load(),
		"dtls_records_malformed": d.recordsMalformed.Load(),
	}
}
