// The two ways a notification leaves: a hook program (posix_spawn, its own process group, stdin a
// pipe, stdout and stderr /dev/null, working directory /) and an HTTP/1.1 POST over a plain socket.
// Each says how it went (failed: an exit status, an HTTP status, a connection error — never a value);
// both give up at once, as `cancelled`, when the daemon stops.

#if canImport(Glibc)
    import Glibc
#endif

enum Hook {
    /// Runs `command` with exactly `environment`, `input` on its stdin: delivered when it exits 0 within
    /// `timeout`. Past it, or once `cancelled`, its whole process group is killed.
    static func run(
        _ command: String,
        environment: [String: String],
        input: [UInt8],
        timeout: Duration,
        cancelled: () -> Bool
    ) -> Delivery {
        var pipeFDs: [Int32] = [-1, -1]
        guard pipe(&pipeFDs) == 0 else { return .failed("pipe: \(String(cString: strerror(errno)))") }
        // Close-on-exec (pipe2 is not in Swift's Glibc): only the dup2 to the hook's stdin stays open in it.
        for fd in pipeFDs { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        defer {
            if pipeFDs[0] >= 0 { close(pipeFDs[0]) }
            if pipeFDs[1] >= 0 { close(pipeFDs[1]) }
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pipeFDs[0], 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        // Nothing else of the daemon's: not its database, its listening socket, its epoll or inotify
        // descriptors (some libraries open theirs without close-on-exec).
        // Not the daemon's working directory (its state folder, say): the root.
        _ = Self.addChdir.map { $0(&actions, "/") }
        if let closeFrom = Self.addCloseFrom {
            _ = closeFrom(&actions, 3)
        } else {
            for fd in Self.openDescriptors() where fd > 2 { posix_spawn_file_actions_addclose(&actions, fd) }
        }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // Its own process group (killed whole on a timeout), signals as a fresh process has them.
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attributes, &none)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for number in [SIGPIPE, SIGTERM, SIGINT, SIGHUP, SIGCHLD, SIGUSR1, SIGUSR2] { sigaddset(&defaults, number) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(
            &attributes,
            Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF)
        )
        let argv: [UnsafeMutablePointer<CChar>?] = [strdup(command), nil]
        let envp: [UnsafeMutablePointer<CChar>?] =
            environment.keys.sorted().map { strdup($0 + "=" + environment[$0]!) } + [nil]
        defer {
            for pointer in argv { free(pointer) }
            for pointer in envp { free(pointer) }
        }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, command, &actions, &attributes, argv, envp)
        guard spawned == 0 else { return .failed("cannot run \(command): \(String(cString: strerror(spawned)))") }
        close(pipeFDs[0])
        pipeFDs[0] = -1
        // The document is small (under a pipe's 64 KiB): written whole even if the hook never reads it.
        var written = 0
        while written < input.count {
            let n = input.withUnsafeBytes { write(pipeFDs[1], $0.baseAddress! + written, $0.count - written) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }  // EPIPE: it exited, or closed its stdin; its status decides
            written += n
        }
        close(pipeFDs[1])
        pipeFDs[1] = -1
        let deadline = ContinuousClock.now + timeout
        var status: Int32 = 0
        while true {
            let done = waitpid(pid, &status, WNOHANG)
            if done == pid { break }
            if done < 0 && errno != EINTR { return .failed("waitpid: \(String(cString: strerror(errno)))") }
            let stop = cancelled()
            if stop || ContinuousClock.now >= deadline {
                kill(-pid, SIGKILL)
                while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
                return stop ? .cancelled : .failed("timed out after \(timeout.components.seconds) s (killed)")
            }
            usleep(5_000)
        }
        let signalled = status & 0x7F
        if signalled != 0 { return .failed("killed by signal \(signalled)") }
        let code = (status >> 8) & 0xFF
        return code == 0 ? .delivered : .failed("exit status \(code)")
    }
}

extension Hook {
    /// glibc's posix_spawn_file_actions_addclosefrom_np (2.34 and later), which Swift's Glibc module does
    /// not declare; nil before it.
    static let addCloseFrom: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32)? =
        dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np").map {
            unsafeBitCast(
                $0,
                to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32).self
            )
        }

    /// glibc's posix_spawn_file_actions_addchdir_np (2.29 and later); nil before it.
    static let addChdir:
        (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, UnsafePointer<CChar>) -> Int32)? =
            dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addchdir_np").map {
                unsafeBitCast(
                    $0,
                    to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, UnsafePointer<CChar>) ->
                        Int32).self
                )
            }

    /// The descriptors open now (/proc/self/fd), for a glibc without closefrom.
    static func openDescriptors() -> [Int32] {
        guard let folder = opendir("/proc/self/fd") else { return [] }
        defer { closedir(folder) }
        var found: [Int32] = []
        while let entry = readdir(folder) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if let fd = Int32(name), fd != dirfd(folder) { found.append(fd) }
        }
        return found
    }
}

enum HTTPPost {
    /// POSTs `body` to `http://host:port/path` with `headers`; nil on a 2xx answer within `timeout`.
    static func post(
        host: String,
        port: Int,
        path: String,
        headers: [(String, String)],
        body: [UInt8],
        timeout: Duration,
        cancelled: () -> Bool
    ) -> Delivery {
        let outcome = attempt(host, port, path, headers, body, timeout, cancelled)
        if cancelled() && outcome != .delivered { return .cancelled }
        return outcome
    }

    private static func attempt(
        _ host: String,
        _ port: Int,
        _ path: String,
        _ headers: [(String, String)],
        _ body: [UInt8],
        _ timeout: Duration,
        _ cancelled: () -> Bool
    ) -> Delivery {
        let deadline = ContinuousClock.now + timeout
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let looked = getaddrinfo(host, String(port), &hints, &list)
        guard looked == 0, let first = list else {
            return .failed("cannot resolve the host: \(String(cString: gai_strerror(looked)))")
        }
        defer { freeaddrinfo(list) }
        var failure = "cannot connect"
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let address = entry {
            entry = address.pointee.ai_next
            let fd = socket(
                address.pointee.ai_family,
                Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue),
                0
            )
            guard fd >= 0 else { continue }
            defer { close(fd) }
            if connect(fd, address.pointee.ai_addr, address.pointee.ai_addrlen) != 0 && errno != EINPROGRESS {
                failure = "cannot connect: \(String(cString: strerror(errno)))"
                continue
            }
            guard wait(fd, for: Int16(POLLOUT), until: deadline, cancelled) else {
                failure = "connect timed out"
                continue
            }
            var error: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length)
            if error != 0 {
                failure = "cannot connect: \(String(cString: strerror(error)))"
                continue
            }
            let authority = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
            var request = "POST \(path) HTTP/1.1\r\nHost: \(authority)\r\nConnection: close\r\n"
            request += "Content-Length: \(body.count)\r\n"
            for (name, value) in headers { request += "\(name): \(value)\r\n" }
            let bytes = Array((request + "\r\n").utf8) + body
            var sent = 0
            while sent < bytes.count {
                let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
                if n > 0 {
                    sent += n
                } else if n < 0 && (errno == EAGAIN || errno == EINTR) {
                    guard wait(fd, for: Int16(POLLOUT), until: deadline, cancelled) else {
                        return .failed("timed out sending")
                    }
                } else {
                    return .failed("send: \(String(cString: strerror(errno)))")
                }
            }
            // The status line is all that is read (at most 4 KiB).
            var answer: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 4_096)
            while !answer.contains(0x0A) && answer.count < 4_096 {
                let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
                if n > 0 {
                    answer += buffer[0..<n]
                } else if n < 0 && (errno == EAGAIN || errno == EINTR) {
                    guard wait(fd, for: Int16(POLLIN), until: deadline, cancelled) else {
                        return .failed("timed out waiting for the answer")
                    }
                } else if n < 0 {
                    return .failed("receive: \(String(cString: strerror(errno)))")
                } else {
                    break
                }
            }
            let line = String(decoding: answer.prefix { $0 != 0x0D && $0 != 0x0A }, as: UTF8.self)
            let parts = line.split(separator: " ")
            guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let code = Int(parts[1]) else {
                return .failed("no HTTP answer")
            }
            return (200..<300).contains(code) ? .delivered : .failed("HTTP \(code)")
        }
        return .failed(failure)
    }

    /// Waits until `fd` is ready for `events`; false once the deadline passes or the wait is cancelled
    /// (looked at every 100 ms).
    private static func wait(
        _ fd: Int32,
        for events: Int16,
        until deadline: ContinuousClock.Instant,
        _ cancelled: () -> Bool
    ) -> Bool {
        while true {
            let left = deadline - ContinuousClock.now
            if left <= .zero || cancelled() { return false }
            var entry = pollfd(fd: fd, events: events, revents: 0)
            let millis = Int32(
                min(left.components.seconds * 1_000 + left.components.attoseconds / 1_000_000_000_000_000 + 1, 100)
            )
            let ready = poll(&entry, 1, millis)
            if ready > 0 { return true }
            if ready < 0 && errno != EINTR { return false }
        }
    }
}
