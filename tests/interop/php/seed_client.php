<?php
/**
 * A seed-compatible PHP client for catsock's interop tests.
 *
 * Seed 000 ships a PHP client (§5.2 SocketClient, §5.3 SocketEventDispatcher,
 * §5.4 SocketMessageReceiver) that must work against catsock unchanged. The
 * seed's code is not copied into the project; this file is our own client that
 * puts exactly the same bytes on the wire:
 *
 * - handshake: "GET {path} HTTP/1.1", "Host: {host}" (no port), a random
 *   Sec-WebSocket-Key, version 13; the reply must contain the literal text
 *   "101 Switching Protocols";
 * - data frames: FIN + text (0x81), always masked, 7-bit / 126 + 16-bit /
 *   127 + 64-bit length forms;
 * - auth: json_encode(['type' => 'auth', 'token' => ..., 'client_type' => ...])
 *   without an envelope, then exactly one frame is read and must be
 *   auth_success;
 * - events: the §5.2 envelope with a gmdate('Y-m-d\TH:i:s\Z') timestamp, a
 *   UUID v4 message_id and the sender hard-coded to "CATS", json_encode with
 *   default flags (\uXXXX escapes, "\/");
 * - a WebSocket ping (opcode 0x9) is answered with an UNMASKED empty pong
 *   "\x8A\x00" and its payload is not read (as in the seed);
 * - close writes an UNMASKED "\x88\x00" and closes the socket at once.
 *
 * CLI (exit code 0 on success, 2 on a client error, 64 on bad usage):
 *
 *   php seed_client.php publish URL TOKEN TYPE PAYLOAD_JSON
 *       Connects as CATS, sends one event built by send(TYPE, payload) and
 *       prints two JSON lines: the auth_success reply, then the exact text of
 *       the frame it sent.
 *   php seed_client.php listen URL TOKEN CLIENT_TYPE N
 *       Connects, prints the auth_success reply, then runs the §5.4 listen
 *       loop and prints each of the first N received messages as a JSON line
 *       (the frame's text as received). The adware_update / budget_update
 *       handlers read $message['payload'] as the seed's do and report what
 *       they read as JSON lines on stderr.
 *   php seed_client.php ping URL TOKEN CLIENT_TYPE [raw|envelope]
 *       Connects, sends {"type":"ping"} (raw, the default) or send('ping', [])
 *       (envelope), prints the auth_success reply and the next message.
 *
 * Failures print "error CODE: message" on stderr.
 */

// Any notice or warning (an undefined array key, a failed fwrite) is a failure.
set_error_handler(static function (int $severity, string $message, string $file, int $line): bool {
    throw new ErrorException($message, 0, $severity, $file, $line);
});

class InteropSocketError extends RuntimeException
{
    private $errorCode;

    public function __construct(string $message, string $errorCode = 'SOCKET_ERROR')
    {
        parent::__construct($message);
        $this->errorCode = $errorCode;
    }

    public function getErrorCode(): string
    {
        return $this->errorCode;
    }
}

class InteropAuthError extends InteropSocketError
{
    public function __construct(string $message = 'Authentication failed')
    {
        parent::__construct($message, 'AUTH_FAILED');
    }
}

/** Wire-compatible with seed 000 §5.2 SocketClient (same public methods, plus ping()). */
class InteropSocketClient
{
    private $options;
    private $stream = null;
    private $open = false;
    private $connectionId = null;
    private $authReply = null;
    private $attempts = 0;
    /** @var string|null the text of the last data frame read */
    private $lastText = null;
    /** @var string|null the JSON text of the last message written */
    private $lastSent = null;

    public function __construct(array $options)
    {
        $this->options = array_merge([
            'url' => '',
            'token' => '',
            'timeout' => 10,
            'auto_reconnect' => true,
            'client_type' => 'CATS',
            'max_reconnect_attempts' => 5,
            'reconnect_delay' => 2,
        ], $options);
        if ($this->options['url'] === '') {
            throw new InteropSocketError('WebSocket URL is required');
        }
    }

    public function connect(): bool
    {
        $url = parse_url($this->options['url']);
        $host = $url['host'];
        $port = $url['port'] ?? 443;
        $path = $url['path'] ?? '/';
        $transport = ($url['scheme'] === 'wss') ? 'ssl://' : '';
        $context = stream_context_create(['ssl' => [
            'verify_peer' => true,
            'verify_peer_name' => true,
            'allow_self_signed' => false,
        ]]);
        $errno = 0;
        $errstr = '';
        $stream = @stream_socket_client(
            "{$transport}{$host}:{$port}",
            $errno,
            $errstr,
            $this->options['timeout'],
            STREAM_CLIENT_CONNECT,
            $context
        );
        if ($stream === false) {
            throw new InteropSocketError("Connection failed: {$errstr} ({$errno})", 'CONNECTION_FAILED');
        }
        $this->stream = $stream;
        $this->upgrade($host, $path);
        $this->authenticate();
        $this->open = true;
        $this->attempts = 0;
        return true;
    }

    private function upgrade(string $host, string $path): void
    {
        $key = base64_encode(random_bytes(16));
        $request = "GET {$path} HTTP/1.1\r\n"
            . "Host: {$host}\r\n"
            . "Upgrade: websocket\r\n"
            . "Connection: Upgrade\r\n"
            . "Sec-WebSocket-Key: {$key}\r\n"
            . "Sec-WebSocket-Version: 13\r\n"
            . "\r\n";
        fwrite($this->stream, $request);

        $head = '';
        while (($line = fgets($this->stream)) !== false) {
            $head .= $line;
            if (trim($line) === '') {
                break;
            }
        }
        if (strpos($head, '101 Switching Protocols') === false) {
            throw new InteropSocketError('WebSocket handshake failed: ' . trim($head), 'HANDSHAKE_FAILED');
        }
    }

    private function authenticate(): void
    {
        $this->writeMessage([
            'type' => 'auth',
            'token' => $this->options['token'],
            'client_type' => $this->options['client_type'],
        ]);
        $reply = $this->readMessage();
        if (!$reply || $reply['type'] !== 'auth_success') {
            throw new InteropAuthError('Authentication failed: ' . ($this->lastText ?? '(no reply)'));
        }
        $this->authReply = $reply;
        $this->connectionId = $reply['connection_id'];
    }

    /** The §5.2 envelope, exactly as the seed's send() builds it. */
    public function send(string $type, $payload): bool
    {
        if (!$this->open) {
            if (!$this->options['auto_reconnect']) {
                throw new InteropSocketError('Not connected to WebSocket server', 'NOT_CONNECTED');
            }
            $this->reconnect();
        }
        return $this->writeMessage([
            'version' => '1.0',
            'type' => $type,
            'timestamp' => gmdate('Y-m-d\TH:i:s\Z'),
            'message_id' => $this->uuid4(),
            'sender' => 'CATS',
            'payload' => $payload,
        ]);
    }

    /** Not in the seed client: a §4.1 JSON heartbeat, {"type":"ping"}, without envelope. */
    public function ping(): bool
    {
        return $this->writeMessage(['type' => 'ping']);
    }

    public function receive()
    {
        if (!$this->open) {
            return null;
        }
        return $this->readMessage();
    }

    private function writeMessage(array $message): bool
    {
        $json = json_encode($message);
        $this->lastSent = $json;
        $written = @fwrite($this->stream, $this->frame($json));
        if ($written === false) {
            $this->open = false;
            throw new InteropSocketError('Failed to send message', 'SEND_FAILED');
        }
        return true;
    }

    private function readMessage()
    {
        $text = $this->readFrame();
        if (!$text) {
            return null;
        }
        $this->lastText = $text;
        return json_decode($text, true);
    }

    /** A masked FIN + text frame. */
    private function frame(string $data): string
    {
        $size = strlen($data);
        $out = chr(0x81);
        if ($size < 126) {
            $out .= chr(0x80 | $size);
        } elseif ($size < 65536) {
            $out .= chr(0x80 | 126) . pack('n', $size);
        } else {
            $out .= chr(0x80 | 127) . pack('J', $size);
        }
        $key = random_bytes(4);
        $out .= $key;
        for ($i = 0; $i < $size; $i++) {
            $out .= $data[$i] ^ $key[$i % 4];
        }
        return $out;
    }

    /**
     * One frame's payload, read the way the seed's decodeFrame reads it: no
     * reassembly of fragments, FIN and the text/binary opcode are ignored, a
     * close ends the connection, a ping is answered at once and its payload is
     * left unread.
     */
    private function readFrame(): ?string
    {
        $head = @fread($this->stream, 2);
        if ($head === false || strlen($head) < 2) {
            // The seed keeps isConnected() true at end of stream (and its listen
            // loop spins); ours stops so the CLI can end.
            if (feof($this->stream)) {
                $this->open = false;
            }
            return null;
        }
        $first = ord($head[0]);
        $second = ord($head[1]);
        $opcode = $first & 0x0F;
        $masked = ($second & 0x80) !== 0;
        $size = $second & 0x7F;

        if ($opcode === 0x8) {
            $this->open = false;
            return null;
        }
        if ($opcode === 0x9) {
            $this->pong();
            return $this->readFrame();
        }
        if ($size === 126) {
            $size = unpack('n', fread($this->stream, 2))[1];
        } elseif ($size === 127) {
            $size = unpack('J', fread($this->stream, 8))[1];
        }
        $key = $masked ? fread($this->stream, 4) : '';

        $data = '';
        while (strlen($data) < $size) {
            $chunk = fread($this->stream, $size - strlen($data));
            if ($chunk === false || $chunk === '') {
                break;
            }
            $data .= $chunk;
        }
        if ($masked) {
            for ($i = 0, $n = strlen($data); $i < $n; $i++) {
                $data[$i] = $data[$i] ^ $key[$i % 4];
            }
        }
        return $data;
    }

    /** Unmasked and empty, as the seed writes it. */
    private function pong(): void
    {
        fwrite($this->stream, chr(0x8A) . chr(0x00));
    }

    private function reconnect(): void
    {
        if ($this->attempts >= $this->options['max_reconnect_attempts']) {
            throw new InteropSocketError('Max reconnection attempts exceeded', 'MAX_RECONNECT_EXCEEDED');
        }
        $this->attempts++;
        sleep($this->options['reconnect_delay'] * $this->attempts);
        $this->connect();
    }

    /** Unmasked "\x88\x00", then the socket is closed without waiting for a reply. */
    public function close(): void
    {
        if ($this->stream !== null) {
            @fwrite($this->stream, chr(0x88) . chr(0x00));
            fclose($this->stream);
            $this->stream = null;
            $this->open = false;
        }
    }

    private function uuid4(): string
    {
        $bytes = random_bytes(16);
        $bytes[6] = chr((ord($bytes[6]) & 0x0F) | 0x40);
        $bytes[8] = chr((ord($bytes[8]) & 0x3F) | 0x80);
        $hex = bin2hex($bytes);
        return substr($hex, 0, 8) . '-' . substr($hex, 8, 4) . '-' . substr($hex, 12, 4)
            . '-' . substr($hex, 16, 4) . '-' . substr($hex, 20, 12);
    }

    public function isConnected(): bool
    {
        return $this->open;
    }

    public function authReply(): ?array
    {
        return $this->authReply;
    }

    public function connectionId(): ?string
    {
        return $this->connectionId;
    }

    public function lastText(): ?string
    {
        return $this->lastText;
    }

    public function lastSent(): ?string
    {
        return $this->lastSent;
    }

    public function __destruct()
    {
        $this->close();
    }
}

/**
 * The §5.4 receive loop: read, dispatch by $message['type'], wait 100 ms. The
 * default handlers read the payload fields the seed's handlers read; with no
 * database here they report them through $report instead of editing rows.
 */
class InteropMessageReceiver
{
    private $client;
    private $handlers = [];
    private $report;

    public function __construct(InteropSocketClient $client, callable $report)
    {
        $this->client = $client;
        $this->report = $report;
        $this->registerHandler('adware_update', [$this, 'onAdwareUpdate']);
        $this->registerHandler('budget_update', [$this, 'onBudgetUpdate']);
    }

    public function registerHandler(string $type, callable $callback): void
    {
        $this->handlers[$type] = $callback;
    }

    /** $onMessage returns false to stop the loop. */
    public function listen(callable $onMessage): void
    {
        while ($this->client->isConnected()) {
            $message = $this->client->receive();
            if ($message) {
                $this->dispatch($message);
                if ($onMessage($message) === false) {
                    return;
                }
            }
            usleep(100000);
        }
    }

    private function dispatch(array $message): void
    {
        $type = $message['type'] ?? 'unknown';
        if (isset($this->handlers[$type])) {
            try {
                call_user_func($this->handlers[$type], $message);
            } catch (Exception $e) {
                ($this->report)(['handler' => $type, 'error' => $e->getMessage()]);
            }
        }
    }

    public function onAdwareUpdate(array $message): void
    {
        $payload = $message['payload'];
        ($this->report)([
            'handler' => 'adware_update',
            'adware_id' => $payload['adware_id'],
            'action' => $payload['action'],
            'data' => $payload['data'],
        ]);
    }

    public function onBudgetUpdate(array $message): void
    {
        $payload = $message['payload'];
        ($this->report)([
            'handler' => 'budget_update',
            'adware_id' => $payload['adware_id'],
            'limit' => $payload['limit'],
        ]);
    }
}

function interop_print(string $line): void
{
    fwrite(STDOUT, $line . "\n");
    fflush(STDOUT);
}

function interop_report(array $fields): void
{
    fwrite(STDERR, json_encode($fields, JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_SLASHES) . "\n");
    fflush(STDERR);
}

function interop_main(array $argv): int
{
    $usage = "usage: php seed_client.php publish URL TOKEN TYPE PAYLOAD_JSON\n"
        . "       php seed_client.php flush URL TOKEN TYPE PAYLOAD_JSON N\n"
        . "       php seed_client.php listen URL TOKEN CLIENT_TYPE N\n"
        . "       php seed_client.php ping URL TOKEN CLIENT_TYPE [raw|envelope]\n";
    $command = $argv[1] ?? '';
    $client = null;
    try {
        if ($command === 'publish' && count($argv) === 6) {
            $payload = json_decode($argv[5], true, 512, JSON_THROW_ON_ERROR);
            $client = new InteropSocketClient(['url' => $argv[2], 'token' => $argv[3]]);
            $client->connect();
            interop_print(json_encode($client->authReply()));
            $client->send($argv[4], $payload);
            interop_print($client->lastSent());
        } elseif ($command === 'flush' && count($argv) === 7) {
            // §5.3 processQueue: every queued event sent at once on one connection,
            // each marked SENT when written; nothing is ever read back.
            $payload = json_decode($argv[5], true, 512, JSON_THROW_ON_ERROR);
            $client = new InteropSocketClient(['url' => $argv[2], 'token' => $argv[3]]);
            $client->connect();
            interop_print(json_encode($client->authReply()));
            $sent = 0;
            for ($i = 0; $i < (int) $argv[6]; $i++) {
                $payload['pay_id'] = (string) $i;
                if ($client->send($argv[4], $payload)) {
                    $sent++;
                }
            }
            interop_print("sent {$sent}");
        } elseif ($command === 'listen' && count($argv) === 6) {
            $wanted = (int) $argv[5];
            $client = new InteropSocketClient([
                'url' => $argv[2], 'token' => $argv[3], 'client_type' => $argv[4],
            ]);
            $client->connect();
            interop_print(json_encode($client->authReply()));
            $seen = 0;
            $receiver = new InteropMessageReceiver($client, 'interop_report');
            $receiver->listen(static function (array $message) use ($client, &$seen, $wanted): bool {
                interop_print($client->lastText());
                $seen++;
                return $seen < $wanted;
            });
            if ($seen < $wanted) {
                throw new InteropSocketError("connection ended after {$seen} of {$wanted} messages", 'CLOSED');
            }
        } elseif ($command === 'ping' && (count($argv) === 5 || count($argv) === 6)) {
            $client = new InteropSocketClient([
                'url' => $argv[2], 'token' => $argv[3], 'client_type' => $argv[4],
            ]);
            $client->connect();
            interop_print(json_encode($client->authReply()));
            if (($argv[5] ?? 'raw') === 'envelope') {
                $client->send('ping', []);
            } else {
                $client->ping();
            }
            $reply = $client->receive();
            if ($reply === null) {
                throw new InteropSocketError('no reply to ping', 'CLOSED');
            }
            interop_print($client->lastText());
        } else {
            fwrite(STDERR, $usage);
            return 64;
        }
    } catch (InteropSocketError $e) {
        fwrite(STDERR, 'error ' . $e->getErrorCode() . ': ' . $e->getMessage() . "\n");
        return 2;
    } finally {
        if ($client !== null) {
            $client->close();
        }
    }
    return 0;
}

exit(interop_main($argv));
