package realtime

import "encoding/binary"

// maskBytes applies the RFC 6455 section 5.3 masking transform to b in place
// and returns the key position after it. key holds the four key octets in
// wire order (big-endian) and pos is the position within the key of b[0]
// (0 to 3), so a payload can be masked in several pieces. Masking and
// unmasking are the same operation.
//
// It works eight bytes at a time (32 per loop turn) and falls back to single
// bytes only for the tail.
func maskBytes(key uint32, pos int, b []byte) int {
	pos &= 3
	var k [4]byte
	binary.BigEndian.PutUint32(k[:], key)
	// kr is the key rotated so that kr[0] applies to b[0].
	kr := [4]byte{k[pos], k[(pos+1)&3], k[(pos+2)&3], k[(pos+3)&3]}
	k32 := uint64(binary.LittleEndian.Uint32(kr[:]))
	k64 := k32 | k32<<32

	i := 0
	for ; len(b)-i >= 32; i += 32 {
		w := b[i : i+32 : i+32]
		binary.LittleEndian.PutUint64(w[0:8], binary.LittleEndian.Uint64(w[0:8])^k64)
		binary.LittleEndian.PutUint64(w[8:16], binary.LittleEndian.Uint64(w[8:16])^k64)
		binary.LittleEndian.PutUint64(w[16:24], binary.LittleEndian.Uint64(w[16:24])^k64)
		binary.LittleEndian.PutUint64(w[24:32], binary.LittleEndian.Uint64(w[24:32])^k64)
	}
	for ; len(b)-i >= 8; i += 8 {
		w := b[i : i+8 : i+8]
		binary.LittleEndian.PutUint64(w, binary.LittleEndian.Uint64(w)^k64)
	}
	// i is a multiple of 8 here, so kr[i&3] is still the right key byte.
	for ; i < len(b); i++ {
		b[i] ^= kr[i&3]
	}
	return (pos + len(b)) & 3
}
