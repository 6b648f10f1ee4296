import ArgumentParser
import Config
import HTTPIngress

#if canImport(Glibc)
    import Glibc
#endif

/// Secrets kept in files instead of on the command line (`/proc/*/cmdline` shows every flag) or in the
/// configuration file: an absolute path, or the name of a systemd credential — a file in
/// `$CREDENTIALS_DIRECTORY`, which `LoadCredential=` (or `LoadCredentialEncrypted=`) fills with a 0400
/// copy only the service's user may read. The file holds the secret alone; one trailing newline is
/// dropped. A file that others may read is refused: a secret everyone can read is none.
enum SecretFile {
    /// The secret in `path`; `key` names where it was given (a flag, or the file's key) in errors.
    static func read(_ path: String, key: String, credentials: String?) throws -> String {
        let resolved: String
        if path.hasPrefix("/") {
            resolved = path
        } else {
            guard let credentials, !credentials.isEmpty else {
                throw ValidationError(
                    "\(key): \(path) is a credential's name, but $CREDENTIALS_DIRECTORY is not set "
                        + "(give the unit LoadCredential=\(path):FILE, or name the file by its absolute path)"
                )
            }
            guard !path.contains("/") else {
                throw ValidationError("\(key): a credential's name has no '/': \(path)")
            }
            resolved = credentials + "/" + path
        }
        // O_NONBLOCK: a FIFO named here must not hang the start; it is refused below as not a file.
        let fd = open(resolved, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK)
        guard fd >= 0 else {
            throw ValidationError("\(key): cannot read \(resolved): \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            throw ValidationError("\(key): \(resolved) is not a regular file")
        }
        if st.st_mode & 0o004 != 0 {
            throw ValidationError("\(key): \(resolved) is readable by everyone: chmod o-r it (0600 or 0640)")
        }
        // Whoever may write it chooses the secret: only root or the daemon's own user, nobody else.
        if st.st_mode & 0o022 != 0 {
            throw ValidationError("\(key): \(resolved) is writable by group or others: chmod go-w it (0600 or 0640)")
        }
        if st.st_uid != 0 && st.st_uid != geteuid() {
            throw ValidationError(
                "\(key): \(resolved) is owned by uid \(st.st_uid): a secret file is root's or carespool's"
            )
        }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while bytes.count <= 65_536 {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            bytes += chunk[..<n]
        }
        guard bytes.count <= 65_536 else { throw ValidationError("\(key): \(resolved) is larger than 64 KiB") }
        if bytes.last == 0x0A { bytes.removeLast() }
        if bytes.last == 0x0D { bytes.removeLast() }
        guard let text = String(validating: bytes, as: UTF8.self), !text.contains("\n") else {
            throw ValidationError("\(key): \(resolved) must hold one line of UTF-8: the secret")
        }
        return text
    }

    /// `$CREDENTIALS_DIRECTORY`, set by systemd for a unit with credentials.
    static var credentialsDirectory: String? { getenv("CREDENTIALS_DIRECTORY").map { String(cString: $0) } }
}
