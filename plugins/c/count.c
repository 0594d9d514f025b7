/* count: lines, words and bytes of files, like `wc`, written to a report.
 *
 *     count OUT FILE...
 *
 * An example of a kiln plugin in C: any language that compiles to WASI
 * preview 1 works (`clang --target=wasm32-wasi`). The stage tree is `/`;
 * relative paths start at `/` (C programs do not read `PWD`).
 */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

/* The manifest `kiln plugin inspect` shows: a `kiln-plugin` custom section. */
__asm__(
    ".section \".custom_section.kiln-plugin\",\"\",@\n"
    ".ascii \"name=count\\n\"\n"
    ".ascii \"version=0.1.0\\n\"\n"
    ".ascii \"description=Count lines, words and bytes of files into a report\\n\"\n"
    ".ascii \"option=OUT FILE...: the report, then the files\\n\"\n"
    ".text\n");

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s OUT FILE...\n", argc > 0 ? argv[0] : "count");
        return 2;
    }
    FILE *out = fopen(argv[1], "w");
    if (!out) {
        perror(argv[1]);
        return 1;
    }
    unsigned long total_l = 0, total_w = 0, total_b = 0;
    for (int i = 2; i < argc; i++) {
        FILE *f = fopen(argv[i], "r");
        if (!f) {
            perror(argv[i]);
            return 1;
        }
        unsigned long l = 0, w = 0, b = 0;
        int c, in_word = 0;
        while ((c = fgetc(f)) != EOF) {
            b++;
            if (c == '\n') l++;
            if (isspace(c)) {
                in_word = 0;
            } else if (!in_word) {
                in_word = 1;
                w++;
            }
        }
        fclose(f);
        fprintf(out, "%lu %lu %lu %s\n", l, w, b, argv[i]);
        total_l += l;
        total_w += w;
        total_b += b;
    }
    if (argc > 3) fprintf(out, "%lu %lu %lu total\n", total_l, total_w, total_b);
    if (fclose(out) != 0) {
        perror(argv[1]);
        return 1;
    }
    return 0;
}
