import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Where the store lives: a SQLite file (one host, the default) or a PostgreSQL database that several
/// carespool hosts share.
package enum DatabaseLocation: Sendable, Equatable {
    case sqlite(path: String)
    case postgres(PostgresTarget)

    /// `--db` or `database`/`[database] url`: a `postgres://` or `postgresql://` URL, else a SQLite
    /// file's path. Any other `scheme://` is refused (a typo must not become a file named `mysql:`).
    package static func parse(_ text: String) throws(DatabaseURLError) -> DatabaseLocation {
        let lowered = text.lowercased()
        if lowered.hasPrefix("postgres://") || lowered.hasPrefix("postgresql://") {
            return .postgres(try PostgresTarget(url: text))
        }
        if lowered.hasPrefix("postgres:") || lowered.hasPrefix("postgresql:") {
            throw DatabaseURLError("a PostgreSQL URL starts postgres:// (postgres://USER@HOST:PORT/DB)")
        }
        if let colon = text.firstIndex(of: ":"), text[colon...].hasPrefix("://"),
            text[..<colon].allSatisfy({ $0.isLetter || $0.isNumber || $0 == "+" || $0 == "-" || $0 == "." })
        {
            throw DatabaseURLError(
                "\(text[..<colon].prefix(20)):// is not a store carespool knows: a SQLite file's path, or "
                    + "postgres://USER@HOST:PORT/DB"
            )
        }
        return .sqlite(path: text)
    }
}

package struct DatabaseURLError: Error, Sendable, CustomStringConvertible, Equatable {
    package var description: String
    init(_ description: String) { self.description = description }
}

/// A PostgreSQL database as libpq's URLs name one: `postgres://USER@HOST:PORT/DB?sslmode=require`, or
/// over a Unix socket `postgres:///DB?host=/run/postgresql` (a `host` that is a folder is the socket's
/// folder; the socket is `.s.PGSQL.PORT` in it). The password is never part of it: a URL is shown by
/// `ps`, by `config check` and in logs, so a URL with one is refused and `[database] password_file`
/// names the file that holds it.
package struct PostgresTarget: Sendable, Equatable {
    package enum Endpoint: Sendable, Equatable {
        case tcp(host: String, port: Int)
        /// The socket file itself: `FOLDER/.s.PGSQL.PORT`.
        case socket(path: String)
    }

    /// libpq's `sslmode`, the values that mean something over a network: `disable`, `prefer` (try TLS,
    /// fall back to plain), `require` (TLS, any certificate), `verify-full` (TLS, the host's name checked
    /// against a trusted certificate). Over a Unix socket TLS is moot and `disable` is in effect.
    package enum TLSMode: String, Sendable, Equatable, CaseIterable {
        case disable, prefer, require
        case verifyFull = "verify-full"
    }

    package var user: String
    package var database: String
    package var endpoint: Endpoint
    package var tls: TLSMode
    /// The URL as given (it holds no secret), for messages.
    package var display: String

    package init(url: String) throws(DatabaseURLError) {
        display = url
        var rest = url[(url.range(of: "://")?.upperBound ?? url.endIndex)...]
        // A password anywhere in the user part (before the last @ ahead of any ?), whatever it holds (/, #):
        // refused before anything else is parsed, and never repeated. No message here repeats the URL.
        let ahead = rest.prefix { $0 != "?" }
        if let at = ahead.lastIndex(of: "@"), ahead[..<at].contains(":") {
            throw Self.passwordRefusal
        }
        var query: Substring = ""
        if let mark = rest.firstIndex(of: "?") {
            query = rest[rest.index(after: mark)...]
            rest = rest[..<mark]
        }
        guard !rest.contains("#") else { throw DatabaseURLError("the database URL: a database URL has no #fragment") }
        let authority: Substring
        var path: Substring = ""
        if let slash = rest.firstIndex(of: "/") {
            authority = rest[..<slash]
            path = rest[rest.index(after: slash)...]
        } else {
            authority = rest
        }
        var userPart: Substring?
        var hostPart = authority
        if let at = authority.lastIndex(of: "@") {
            userPart = authority[..<at]
            hostPart = authority[authority.index(after: at)...]
        }
        var user = try userPart.map { part throws(DatabaseURLError) in try Self.decoded(part, url: url) }
        var host: String?
        var port: Int?
        if !hostPart.isEmpty {
            if hostPart.hasPrefix("[") {
                guard let close = hostPart.firstIndex(of: "]") else {
                    throw DatabaseURLError("the database URL: an IPv6 host is written [::1] and needs its ]")
                }
                host = String(hostPart[hostPart.index(after: hostPart.startIndex)..<close])
                let tail = hostPart[hostPart.index(after: close)...]
                if !tail.isEmpty {
                    guard tail.hasPrefix(":") else {
                        throw DatabaseURLError("the database URL: after [host] comes :PORT or /")
                    }
                    port = try Self.port(tail.dropFirst(), url: url)
                }
            } else if let colon = hostPart.lastIndex(of: ":") {
                host = try Self.decoded(hostPart[..<colon], url: url)
                port = try Self.port(hostPart[hostPart.index(after: colon)...], url: url)
            } else {
                host = try Self.decoded(hostPart, url: url)
            }
            if host == "" { host = nil }
        }
        guard !path.contains("/") else {
            throw DatabaseURLError("the database URL: the path is the database's name alone (postgres://HOST/DB)")
        }
        var database = try Self.decoded(path, url: url)
        var mode: TLSMode?
        var seen = Set<String>()
        // A password among the parameters is refused first, whatever else is wrong with them.
        for pair in query.split(separator: "&", omittingEmptySubsequences: true) {
            let name = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)[0]
            if (try? Self.decoded(name, url: url))?.lowercased() == "password" { throw Self.passwordRefusal }
        }
        for pair in query.split(separator: "&", omittingEmptySubsequences: true) {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let key = try Self.decoded(parts[0], url: url)
            let value = try Self.decoded(parts.count > 1 ? parts[1] : "", url: url)
            guard seen.insert(key).inserted else {
                throw DatabaseURLError("the database URL: \(Self.shown(key)) is given twice")
            }
            switch key {
            case "host":
                guard !value.isEmpty else { throw DatabaseURLError("the database URL: host= is empty") }
                host = value
            case "port": port = try Self.port(Substring(value), url: url)
            case "user": user = value
            case "dbname": database = value
            case "sslmode":
                guard let value = TLSMode(rawValue: value) else {
                    throw DatabaseURLError(
                        "the database URL: sslmode must be one of "
                            + TLSMode.allCases.map(\.rawValue).joined(separator: ", ")
                    )
                }
                mode = value
            case "password": throw Self.passwordRefusal
            default:
                throw DatabaseURLError(
                    "the database URL: \(Self.shown(key)) is not a parameter carespool reads (host, port, user, dbname, "
                        + "sslmode)"
                )
            }
        }
        guard !database.isEmpty else {
            throw DatabaseURLError("the database URL: name the database: postgres://USER@HOST:PORT/DB")
        }
        let port_ = port ?? 5432
        if let host, host.hasPrefix("/") {
            endpoint = .socket(path: (host.hasSuffix("/") ? host : host + "/") + ".s.PGSQL.\(port_)")
            guard mode == nil || mode == .disable || mode == .prefer else {
                throw DatabaseURLError(
                    "the database URL: sslmode=\(mode!.rawValue) over a Unix socket, which has no TLS"
                )
            }
            tls = .disable
        } else if let host {
            endpoint = .tcp(host: host, port: port_)
            tls = mode ?? .prefer
        } else {
            // No host: libpq's default, the local socket in Debian's folder.
            endpoint = .socket(path: "/run/postgresql/.s.PGSQL.\(port_)")
            tls = .disable
        }
        guard let name = user ?? Self.processUser, !name.isEmpty else {
            throw DatabaseURLError("the database URL: name the role: postgres://USER@HOST/DB")
        }
        // PostgreSQL cuts names at 63 bytes: a longer one names another role or database than meant.
        guard name.utf8.count <= 63, database.utf8.count <= 63 else {
            throw DatabaseURLError("the database URL: a role or database name is at most 63 bytes")
        }
        self.user = name
        self.database = database
    }

    static let passwordRefusal = DatabaseURLError(
        "the database URL holds a password, which ps, logs and `config check` would show: put the password "
            + "alone in a file (0600) and name it with [database] password_file or --db-password-file"
    )

    /// A parameter's name as a message may repeat it: a short lowercase word, else not at all.
    static func shown(_ key: String) -> String {
        key.count <= 32 && key.allSatisfy({ $0.isASCII && ($0.isLowercase || $0 == "_") }) && !key.isEmpty
            ? key : "a parameter"
    }

    /// The login name of the process's user, libpq's default role.
    package static var processUser: String? {
        guard let entry = getpwuid(geteuid()), let name = entry.pointee.pw_name else { return nil }
        return String(cString: name)
    }

    static func port(_ text: Substring, url: String) throws(DatabaseURLError) -> Int {
        guard let port = Int(text), (1...65535).contains(port) else {
            throw DatabaseURLError("the database URL: the port must be a number from 1 to 65535")
        }
        return port
    }

    /// `%XX` decoded; anything that is not UTF-8 after decoding is refused.
    static func decoded(_ text: Substring, url: String) throws(DatabaseURLError) -> String {
        var bytes: [UInt8] = []
        var iterator = Array(text.utf8)[...]
        while let byte = iterator.popFirst() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard iterator.count >= 2,
                let value = UInt8(String(decoding: iterator.prefix(2), as: UTF8.self), radix: 16)
            else { throw DatabaseURLError("the database URL: a % must be followed by two hex digits") }
            bytes.append(value)
            iterator = iterator.dropFirst(2)
        }
        guard let decoded = String(validating: bytes, as: UTF8.self), !decoded.utf8.contains(0) else {
            throw DatabaseURLError("the database URL: percent-escapes that are not UTF-8 text")
        }
        return decoded
    }
}
