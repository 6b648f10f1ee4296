#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/fs.h>

#include "CRename.h"

int carespool_rename_noreplace(int olddirfd, const char *oldpath, int newdirfd, const char *newpath) {
    // The system call itself: glibc's wrapper needs 2.28, and the flag is the kernel's (3.15 and later).
    return (int)syscall(SYS_renameat2, olddirfd, oldpath, newdirfd, newpath, RENAME_NOREPLACE);
}
