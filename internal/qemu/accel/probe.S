# The accelerator probe's guest code: a boot sector that SeaBIOS loads at 0x7c00.
#
# It runs the kinds of code real guests run on their way up, each step reported as one letter
# on the isa-debugcon port 0x402 (where SeaBIOS writes its own log):
#   r  real mode, after a string output (rep outsb, which KVM emulates)
#   p  32-bit protected mode
#   l  64-bit long mode with 2 MiB pages
#   w  16 MiB written and read back in long mode
#   u  back in real mode, reading above 1 MiB through a 4 GiB data segment ("big real
#      mode", which boot loaders such as syslinux use and KVM may have to emulate)
#   b  a BIOS call (int 0x12) answered after the round trip
# and then exits QEMU through isa-debug-exit at port 0xf4: value 0x21 (exit status 67) on
# success, 0x01 (exit status 3) after an X on a failed check.
#
# Assemble: as --64 -o probe.o probe.S && ld -Ttext=0x7c00 --oformat binary -o probe.bin probe.o
# (payload_test.go does this and compares with the bytes in payload.go).

	.set DEBUGCON, 0x402
	.set EXITPORT, 0xf4
	.set PML4, 0x10000
	.set WORK, 0x200000
	.set WORKQWORDS, 16*1024*1024/8
	.set GOLDEN, 0x9e3779b97f4a7c15

	.text
	.code16
	.globl _start
_start:
	cli
	xorw %ax, %ax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %ss
	movw $0x7c00, %sp
	cld
	movw $banner, %si
	movw $(banner_end - banner), %cx
	movw $DEBUGCON, %dx
	rep outsb
	movb $'r', %al
	outb %al, %dx

	inb $0x92, %al			# A20 on (fast gate)
	orb $2, %al
	andb $0xfe, %al
	outb %al, $0x92
	lgdtl gdtr
	movl %cr0, %eax
	orb $1, %al
	movl %eax, %cr0
	ljmp $0x08, $pm32

	.code32
pm32:
	movw $0x10, %ax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %ss
	movl $0x7c00, %esp
	movb $'p', %al
	movw $DEBUGCON, %dx
	outb %al, %dx
	# Page tables: PML4 at 0x10000, PDPT at 0x11000, PD at 0x12000 mapping 1 GiB 1:1.
	movl $PML4, %edi
	xorl %eax, %eax
	movl $(3*4096/4), %ecx
	rep stosl
	movl $(PML4+0x1003), PML4
	movl $(PML4+0x2003), PML4+0x1000
	movl $(PML4+0x2000), %edi
	movl $0x83, %eax		# present, writable, 2 MiB page
	movl $512, %ecx
1:	movl %eax, (%edi)
	addl $0x200000, %eax
	addl $8, %edi
	loop 1b
	movl %cr4, %eax
	orl $0x20, %eax			# PAE
	movl %eax, %cr4
	movl $PML4, %eax
	movl %eax, %cr3
	movl $0xc0000080, %ecx		# EFER.LME
	rdmsr
	orl $0x100, %eax
	wrmsr
	movl %cr0, %eax
	orl $0x80000000, %eax		# paging on: long mode
	movl %eax, %cr0
	ljmp $0x18, $lm64

	.code64
lm64:
	movw $DEBUGCON, %dx		# rdmsr/wrmsr clobbered it
	movb $'l', %al
	outb %al, %dx
	movabsq $GOLDEN, %rbx
	movq $WORK, %rdi
	movq $WORKQWORDS, %rcx
	xorq %rax, %rax
2:	movq %rax, (%rdi)
	addq %rbx, %rax
	addq $8, %rdi
	decq %rcx
	jnz 2b
	movq $WORK, %rsi
	movq $WORKQWORDS, %rcx
	xorq %rax, %rax
3:	cmpq %rax, (%rsi)
	jne fail64
	addq %rbx, %rax
	addq $8, %rsi
	decq %rcx
	jnz 3b
	movb $'w', %al
	outb %al, %dx
	pushq $0x08			# back to 32-bit compatibility mode
	pushq $compat32
	lretq
fail64:
	movb $'X', %al
	outb %al, %dx
	movb $1, %al
	outb %al, $EXITPORT
	hlt

	.code32
compat32:
	movl %cr0, %eax			# paging off leaves long mode
	andl $0x7fffffff, %eax
	movl %eax, %cr0
	movl $0xc0000080, %ecx
	rdmsr
	andl $~0x100, %eax
	wrmsr
	ljmp $0x20, $pm16

	.code16
pm16:
	movl %cr0, %eax			# DS keeps its 4 GiB limit in real mode
	andb $0xfe, %al
	movl %eax, %cr0
	ljmp $0, $rm16
rm16:
	xorw %ax, %ax
	movw %ax, %ss
	movw %ax, %es
	movw $0x7c00, %sp
	movl $(WORK+8), %esi		# the second qword long mode wrote: GOLDEN
	addr32 movl (%esi), %eax
	cmpl $(GOLDEN & 0xffffffff), %eax
	jne fail16
	movw $DEBUGCON, %dx
	movb $'u', %al
	outb %al, %dx
	xorw %ax, %ax
	movw %ax, %ds
	int $0x12			# conventional memory, KiB
	cmpw $256, %ax
	jb fail16
	movw $DEBUGCON, %dx
	movb $'b', %al
	outb %al, %dx
	movb $'\n', %al
	outb %al, %dx
	movb $0x21, %al
	outb %al, $EXITPORT
	hlt
fail16:
	movw $DEBUGCON, %dx
	movb $'X', %al
	outb %al, %dx
	movb $1, %al
	outb %al, $EXITPORT
	hlt

banner:
	.ascii "\nRAKHSH-PROBE:"
banner_end:

	.p2align 3
gdt:
	.quad 0
	.quad 0x00cf9a000000ffff	# 0x08 32-bit code, 4 GiB
	.quad 0x00cf92000000ffff	# 0x10 data, 4 GiB
	.quad 0x00af9a000000ffff	# 0x18 64-bit code
	.quad 0x00009a000000ffff	# 0x20 16-bit code, 64 KiB
gdtr:
	.word gdtr - gdt - 1
	.long gdt

	.org 510
	.byte 0x55, 0xaa
