// A gzip inflater over the system's zlib (RFC 1952 members, one after another), for streaming reads:
// the z_stream lives in C, at an address that never moves, as zlib requires.
#ifndef CZLIB_H
#define CZLIB_H

#include <stddef.h>

typedef struct carespool_inflater carespool_inflater;

/// Needs more input, or has more output for the next call.
#define CARESPOOL_INFLATE_MORE 0
/// A gzip member ended (its CRC-32 and length checked); the next call with input starts the next one.
#define CARESPOOL_INFLATE_MEMBER_END 1
/// Not gzip, or corrupt: `message` says what zlib found.
#define CARESPOOL_INFLATE_CORRUPT (-1)

/// NULL when out of memory.
carespool_inflater *carespool_inflater_new(void);
void carespool_inflater_free(carespool_inflater *inflater);

/// One step: reads at most `in_len` bytes, writes at most `out_len`; says how many of each in `in_used`
/// and `out_made`.
int carespool_inflate(
    carespool_inflater *inflater,
    const unsigned char *in, size_t in_len, size_t *in_used,
    unsigned char *out, size_t out_len, size_t *out_made,
    const char **message);

#endif
