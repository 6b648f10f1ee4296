// glibc's malloc tuning (malloc.h), which Swift's Glibc module does not import.
#ifndef CMEMORY_H
#define CMEMORY_H

/// Caps malloc's arenas at `arenas` (M_ARENA_MAX): each thread that allocates otherwise may get an arena
/// of its own, and memory freed in one is not reused by another — the daemon's resident memory grew by
/// tens of MiB over its memory budget's sums that way. Returns 1 on success.
int carespool_malloc_arenas(int arenas);

/// Gives freed memory back to the system (malloc_trim(0)) after a large piece of work; returns 1 when
/// some was released.
int carespool_malloc_trim(void);

#endif
