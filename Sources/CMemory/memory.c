#include <malloc.h>

#include "CMemory.h"

int carespool_malloc_arenas(int arenas) { return mallopt(M_ARENA_MAX, arenas); }

int carespool_malloc_trim(void) { return malloc_trim(0); }
