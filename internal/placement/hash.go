package placement

// Every client and worker must agree on where a key lives without talking to
// each other, so the hash below is part of the wire protocol: it must give
// the same bits in every process, on every architecture, in every release.
// That rules out hash/maphash (randomly seeded per process) and anything
// whose output depends on the Go version. Changing any constant here moves
// almost every cached block; TestGolden exists to catch that.

const (
	fnvOffset64 = 14695981039346656037
	fnvPrime64  = 1099511628211
)

// hashString is FNV-1a 64 followed by a splitmix64 finalizer. FNV-1a alone is
// deterministic and cheap but its high bits avalanche poorly on short,
// similar strings ("…\x00block1", "…\x00block2"); the finalizer fixes that.
func hashString(s string) uint64 {
	h := uint64(fnvOffset64)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime64
	}
	return mix64(h)
}

// mix64 is the splitmix64 finalizer: a bijection on uint64 in which every
// input bit affects every output bit with probability close to 1/2.
func mix64(z uint64) uint64 {
	z ^= z >> 30
	z *= 0xbf58476d1ce4e5b9
	z ^= z >> 27
	z *= 0x94d049bb133111eb
	z ^= z >> 31
	return z
}

// memberSeed is the per-member half of the (member, key) hash. The extra
// constant keeps a key that happens to equal a member ID from hashing to the
// same value as that ID, which would make their combination zero.
func memberSeed(id string) uint64 {
	return mix64(hashString(id) ^ 0x9e3779b97f4a7c15)
}

// combine hashes a (member, key) pair from the two precomputed halves, so a
// lookup hashes the key once and then pays only a few multiplications per
// member. XOR of two independent-looking values followed by a full
// avalanche is enough for rendezvous hashing: what matters is that, for a
// fixed key, the values for different members look independent.
func combine(keyHash, seed uint64) uint64 {
	return mix64(keyHash ^ seed)
}

// unit maps a 64-bit hash to a float in the open interval (0, 1). It keeps
// the top 53 bits and forces the lowest of them to 1 so the result is an
// exact float64 that is never 0 (ln 0 = -Inf) nor 1 (ln 1 = 0, a division by
// zero in the score).
func unit(x uint64) float64 {
	return float64(x>>11|1) * 0x1p-53
}
