package dataplane

// BatchHistogramBuckets are the upper bounds (inclusive) of the batch-size
// histogram buckets: a batch of n datagrams is counted in the first bucket
// whose bound is >= n.
var BatchHistogramBuckets = [...]int{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024}

// Stats are the counters of one datapath, summed over its loops. All fields
// are totals since start.
type Stats struct {
	Datapath string `json:"datapath"`
	Loops    int    `json:"loops"`

	ReadCalls      uint64 `json:"read_calls"`       // read system calls that returned data
	ReadWouldBlock uint64 `json:"read_would_block"` // read calls that found the socket empty (gso)
	RxPackets      uint64 `json:"rx_packets"`
	RxBytes        uint64 `json:"rx_bytes"`
	RxGROReads     uint64 `json:"rx_gro_reads"`    // reads that returned a GRO-coalesced buffer
	RxKernelDrops  uint64 `json:"rx_kernel_drops"` // SO_RXQ_OVFL: datagrams the kernel dropped on a full receive queue
	RxStaleDrops   uint64 `json:"rx_stale_drops"`  // datagrams dropped unread after waiting longer than the queue delay bound (gso)

	// BatchSizes[i] counts read calls whose number of datagrams (after
	// splitting GRO reads) fell in bucket i of BatchHistogramBuckets.
	BatchSizes [len(BatchHistogramBuckets)]uint64 `json:"batch_sizes"`

	TxPackets     uint64 `json:"tx_packets"`
	TxBytes       uint64 `json:"tx_bytes"`
	TxGSOSends    uint64 `json:"tx_gso_sends"`    // sendmsg calls carrying UDP_SEGMENT
	TxGSOSegments uint64 `json:"tx_gso_segments"` // datagrams sent inside those calls
	TxMmsgCalls   uint64 `json:"tx_mmsg_calls"`   // sendmmsg calls
	TxMmsgPackets uint64 `json:"tx_mmsg_packets"` // datagrams sent by sendmmsg
	TxSingleSends uint64 `json:"tx_single_sends"` // one datagram, one syscall
	TxErrors      uint64 `json:"tx_errors"`
	GSOFallbacks  uint64 `json:"gso_fallbacks"` // sockets that turned GSO off for good
	Drops         uint64 `json:"drops"`         // datagrams dropped in userspace (queue full, closed socket, above the path MTU under DONT-FRAGMENT)
}

// BatchBucket returns the index in BatchHistogramBuckets of a batch of n
// datagrams (n >= 1); batches beyond the last bound go in the last bucket.
func BatchBucket(n int) int {
	for i, b := range BatchHistogramBuckets {
		if n <= b {
			return i
		}
	}
	return len(BatchHistogramBuckets) - 1
}

// Add adds the counters of o to s (Datapath is kept, Loops are summed).
func (s *Stats) Add(o Stats) {
	if s.Datapath == "" {
		s.Datapath = o.Datapath
	}
	s.Loops += o.Loops
	s.ReadCalls += o.ReadCalls
	s.ReadWouldBlock += o.ReadWouldBlock
	s.RxPackets += o.RxPackets
	s.RxBytes += o.RxBytes
	s.RxGROReads += o.RxGROReads
	s.RxKernelDrops += o.RxKernelDrops
	s.RxStaleDrops += o.RxStaleDrops
	for i := range s.BatchSizes {
		s.BatchSizes[i] += o.BatchSizes[i]
	}
	s.TxPackets += o.TxPackets
	s.TxBytes += o.TxBytes
	s.TxGSOSends += o.TxGSOSends
	s.TxGSOSegments += o.TxGSOSegments
	s.TxMmsgCalls += o.TxMmsgCalls
	s.TxMmsgPackets += o.TxMmsgPackets
	s.TxSingleSends += o.TxSingleSends
	s.TxErrors += o.TxErrors
	s.GSOFallbacks += o.GSOFallbacks
	s.Drops += o.Drops
}
