import HTTPIngress
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOExtras
import NIOPosix
import ServiceLifecycle
import Systemd

#if canImport(Glibc)
    import Glibc
#endif

/// The HTTP endpoint on a listening socket systemd passed (socket activation, `LISTEN_FDS`).
/// Hummingbird 2.28's `Application` only binds an address itself, so this runs the same router and
/// HTTP/1 channel over NIO's `ServerBootstrap.bind(_:)` on the passed socket, with what `Application`
/// adds: the connection limit, the idle (header) timeout, the `Server` header, a 500 for an unexpected
/// error, and graceful shutdown — stop accepting, let every in-flight request finish (connections are
/// quiesced), then return.
struct ActivatedServer: Service {
    let socket: Int32
    let responder: RouterResponder<IngressContext>
    let configuration: HTTPConfiguration
    let logger: Logger
    let onServerRunning: @Sendable () -> Void

    func run() async throws {
        let responder = self.responder
        let logger = self.logger
        let channelSetup = HTTP1Channel(
            responder: { request, responseWriter, channel in
                let context = IngressContext(source: .init(channel: channel, logger: logger))
                var response: Response
                do {
                    response = try await responder.respond(to: request, context: context)
                } catch let error as any HTTPResponseError {
                    response = try error.response(from: request, context: context)
                } catch {
                    response = Response(status: .internalServerError)
                }
                response.headers[.server] = "carespool"
                try await responseWriter.write(response: response.head, body: response.body)
            },
            configuration: .init(idleTimeout: .init(configuration.headerTimeout))
        )
        let group = MultiThreadedEventLoopGroup.singleton
        let quiescing = ServerQuiescingHelper(group: group)
        let limit = MaximumAvailableConnections(configuration.maxConnections, logger: logger)
        let server = try await ServerBootstrap(group: group)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        AvailableConnectionsChannelHandler(delegate: limit)
                    )
                    try channel.pipeline.syncOperations.addHandler(quiescing.makeServerChannelHandler(channel: channel))
                }
            }
            .childChannelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            .bind(NIOBSDSocket.Handle(socket)) { channel in channelSetup.setup(channel: channel, logger: logger) }
        logger.notice(
            "HTTP endpoint on a socket passed by systemd",
            metadata: ["http.address": "\(server.channel.localAddress?.description ?? "?")"]
        )
        onServerRunning()
        await withGracefulShutdownHandler {
            await withDiscardingTaskGroup { tasks in
                do {
                    try await server.executeThenClose { inbound in
                        for try await connection in inbound {
                            tasks.addTask { await channelSetup.handle(value: connection, logger: logger) }
                        }
                    }
                } catch {
                    logger.error("accepting connections failed", metadata: ["error": "\(error)"])
                }
            }
        } onGracefulShutdown: {
            quiescing.initiateShutdown(promise: nil)
        }
    }

    /// The listening socket systemd passed to this process, if any (`LISTEN_PID` is ours and
    /// `LISTEN_FDS` at least 1: the first one, fd 3). The variables are removed, so children never
    /// take the socket for theirs.
    static func passedSocket() -> Int32? {
        guard let pid = getenv("LISTEN_PID").flatMap({ Int32(String(cString: $0)) }), pid == getpid(),
            let count = getenv("LISTEN_FDS").flatMap({ Int(String(cString: $0)) }), count >= 1
        else { return nil }
        unsetenv("LISTEN_PID")
        unsetenv("LISTEN_FDS")
        unsetenv("LISTEN_FDNAMES")
        let fd: Int32 = 3
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        return fd
    }
}
