// renameat2(2) with RENAME_NOREPLACE, which Swift's Glibc module does not declare.
#ifndef CRENAME_H
#define CRENAME_H

/// Renames `oldpath` (relative to the folder `olddirfd`) to `newpath` (relative to `newdirfd`), failing
/// with EEXIST instead of replacing a file of that name. Returns 0, or -1 with errno set (EINVAL or
/// ENOSYS where the filesystem or kernel cannot do it).
int carespool_rename_noreplace(int olddirfd, const char *oldpath, int newdirfd, const char *newpath);

#endif
