/* A pipeline stage in C: reads infistream messages, adds each video frame's mean brightness
 * to the header as "result", and forwards the message. It links only libzmq: the protocol
 * is a JSON header part followed by raw array parts (docs/protocol.md).
 *
 *   gcc -O2 -o brightness_stage brightness_stage.c -lzmq
 *   ./brightness_stage ipc:///tmp/in.sock ipc:///tmp/out.sock   # connects input, binds output
 *
 * It runs until SIGINT or SIGTERM (see docs/protocol.md, "Ending cleanly", for why a
 * stage that exits at the final end-of-stream must first wait for its reader to leave).
 * For brevity the JSON handling is string-level: it reads "kind" and appends a "result" key
 * before the header's closing brace. A real stage would use a JSON library.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define MAX_PARTS 17           /* header + at most 16 buffers, as the protocol allows */
#define MAX_HEADER 65536

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s INPUT_URL OUTPUT_URL\n", argv[0]);
        return 2;
    }
    void *context = zmq_ctx_new();
    void *in = zmq_socket(context, ZMQ_PULL), *out = zmq_socket(context, ZMQ_PUSH);
    int hwm = 4, linger = 2000;
    zmq_setsockopt(in, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(out, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(out, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_connect(in, argv[1]) || zmq_bind(out, argv[2])) {
        fprintf(stderr, "cannot open %s / %s: %s\n", argv[1], argv[2], zmq_strerror(zmq_errno()));
        return 1;
    }
    long forwarded = 0;
    for (;;) {
        zmq_msg_t parts[MAX_PARTS];
        int count = 0, more = 1;
        while (more) {                         /* receive one whole multipart message */
            zmq_msg_t scratch, *part = count < MAX_PARTS ? &parts[count] : &scratch;
            zmq_msg_init(part);
            if (zmq_msg_recv(part, in, 0) < 0) goto done;   /* a signal (EINTR) ends the stage */
            more = zmq_msg_more(part);
            if (part == &scratch) zmq_msg_close(part); else count++;
        }
        size_t head_size = zmq_msg_size(&parts[0]);
        if (more || head_size >= MAX_HEADER || !memchr(zmq_msg_data(&parts[0]), '}', head_size)) {
            fprintf(stderr, "dropping a malformed message (%d parts, header %zu bytes)\n", count, head_size);
            for (int i = 0; i < count; i++) zmq_msg_close(&parts[i]);
            continue;
        }
        char header[MAX_HEADER + 64];
        memcpy(header, zmq_msg_data(&parts[0]), head_size);
        header[head_size] = '\0';
        if (count == 2 && strstr(header, "\"kind\":\"video\"")) {
            const unsigned char *pixels = zmq_msg_data(&parts[1]);
            size_t n = zmq_msg_size(&parts[1]);
            unsigned long long sum = 0;
            for (size_t i = 0; i < n; i++) sum += pixels[i];
            char *close_brace = strrchr(header, '}');
            snprintf(close_brace, 64, ",\"result\":{\"mean_brightness\":%.3f}}", n ? (double)sum / n : 0.0);
        }
        zmq_msg_t head;
        zmq_msg_init_size(&head, strlen(header));
        memcpy(zmq_msg_data(&head), header, strlen(header));
        zmq_msg_close(&parts[0]);
        zmq_msg_send(&head, out, count > 1 ? ZMQ_SNDMORE : 0);
        for (int i = 1; i < count; i++)          /* array parts go on untouched, not copied */
            zmq_msg_send(&parts[i], out, i + 1 < count ? ZMQ_SNDMORE : 0);
        forwarded++;
    }
done:
    fprintf(stderr, "brightness_stage: forwarded %ld messages\n", forwarded);
    zmq_close(in);
    zmq_close(out);
    zmq_ctx_term(context);                     /* waits (LINGER) until the tail is sent */
    return 0;
}
