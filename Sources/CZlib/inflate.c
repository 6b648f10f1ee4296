#include "czlib.h"

#include <stdlib.h>
#include <zlib.h>

struct carespool_inflater {
    z_stream stream;
    int ended;
};

carespool_inflater *carespool_inflater_new(void) {
    carespool_inflater *inflater = calloc(1, sizeof *inflater);
    if (inflater == NULL) return NULL;
    // 15 + 16: a 32 KiB window, gzip wrapper only (a raw zlib stream or deflate data is no gzip file).
    if (inflateInit2(&inflater->stream, 15 + 16) != Z_OK) {
        free(inflater);
        return NULL;
    }
    return inflater;
}

void carespool_inflater_free(carespool_inflater *inflater) {
    if (inflater == NULL) return;
    inflateEnd(&inflater->stream);
    free(inflater);
}

int carespool_inflate(
    carespool_inflater *inflater,
    const unsigned char *in, size_t in_len, size_t *in_used,
    unsigned char *out, size_t out_len, size_t *out_made,
    const char **message) {
    *in_used = 0;
    *out_made = 0;
    if (inflater->ended) {
        if (in_len == 0) return CARESPOOL_INFLATE_MEMBER_END;
        // More bytes after a member: the next member (gzip(1) concatenates them), else corrupt.
        inflateReset(&inflater->stream);
        inflater->ended = 0;
    }
    if (in_len > (size_t)0x40000000) in_len = 0x40000000;
    if (out_len > (size_t)0x40000000) out_len = 0x40000000;
    inflater->stream.next_in = (Bytef *)in;
    inflater->stream.avail_in = (uInt)in_len;
    inflater->stream.next_out = out;
    inflater->stream.avail_out = (uInt)out_len;
    int rc = inflate(&inflater->stream, Z_NO_FLUSH);
    *in_used = in_len - inflater->stream.avail_in;
    *out_made = out_len - inflater->stream.avail_out;
    switch (rc) {
    case Z_STREAM_END:
        inflater->ended = 1;
        return CARESPOOL_INFLATE_MEMBER_END;
    case Z_OK:
    case Z_BUF_ERROR:
        return CARESPOOL_INFLATE_MORE;
    case Z_MEM_ERROR:
        *message = "out of memory";
        return CARESPOOL_INFLATE_CORRUPT;
    case Z_NEED_DICT:
        *message = "a preset dictionary, which gzip files never have";
        return CARESPOOL_INFLATE_CORRUPT;
    default:
        *message = inflater->stream.msg != NULL ? inflater->stream.msg : "corrupt data";
        return CARESPOOL_INFLATE_CORRUPT;
    }
}
