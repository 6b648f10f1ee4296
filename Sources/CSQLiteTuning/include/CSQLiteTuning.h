// Process-wide SQLite settings that only sqlite3_config can make: a variadic C function, which Swift
// cannot call.
#ifndef CSQLITETUNING_H
#define CSQLITETUNING_H

/// Turns SQLite's memory statistics off (SQLITE_CONFIG_MEMSTATUS 0). Must run before SQLite is
/// initialised (before the first connection opens); returns SQLITE_OK, or SQLITE_MISUSE when too late.
int carespool_sqlite_memstatus_off(void);

#endif
