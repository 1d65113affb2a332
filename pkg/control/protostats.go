package control

// protocolStats is ServerStats.Protocol: the counters of the DTLS
// listeners (dtls.go), of RFC 5780 (natdiscovery.go) and of RFC 6062 TCP
// allocations (tcpalloc.go).
func (s *Server) protocolStats() map[string]uint64 {
	d, n, t := &s.stats.dtls, &s.nat, &s.tcp
	return map[string]uint64{
		"tcp_allocations":         t.allocations.Load(),
		"tcp_connects":            t.connects.Load(),
		"tcp_connect_failures":    t.connectFailures.Load(),
		"tcp_connection_attempts": t.attempts.Load(),
		"tcp_peer_refused":        t.peerRefused.Load(),
		"tcp_at_limit":            t.connsClosedAtFull.Load(),
		"tcp_binds":               t.binds.Load(),
		"tcp_bind_timeouts":       t.bindTimeouts.Load(),
		"tcp_bytes_to_peer":       t.bytesToPeer.Load(),
		"tcp_bytes_to_client":     t.bytesToClient.Load(),
		"rfc5780_responses":       n.rfc5780.Load(),
		"rfc5780_change_ip":       n.changeIP.Load(),
		"rfc5780_change_port":     n.changePort.Load(),
		"rfc5780_response_port":   n.responsePort.Load(),
		"rfc5780_padding":         n.padding.Load(),
		"rfc5780_alt_dropped":     n.altDropped.Load(),
		"dtls_handshakes":         d.handshakes.Load(),
		"dtls_handshake_errors":   d.handshakeErrors.Load(),
		"dtls_refused_pending":    d.refusedPending.Load(),
		"dtls_records_malformed":  d.recordsMalformed.Load(),
	}
}
