#include <stdio.h>
#include <stdlib.h>
#include <stdarg.h>
void ggml_abort(const char * file, int line, const char * fmt, ...) { fprintf(stderr, "abort %s:%d\n", file, line); abort(); }
