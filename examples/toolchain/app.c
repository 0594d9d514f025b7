#include <stdio.h>

int main(void) {
    puts("hello from a static binary built in a toolchain image");
    return 0;
}
